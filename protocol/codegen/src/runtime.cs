    // ---- Garrison wire runtime (generated with the codecs below; do not edit) ----
    //
    // Reads and writes the rkyv subset Garrison's messages use (docs/protocol.md, "Payload"):
    // little-endian, 32-bit relative pointers, unaligned, the root at the end. Decoders check
    // every bound, offset, tag, bool and UTF-8 sequence and throw a DecodeException naming the
    // field; encoders write the exact bytes rkyv writes. C# 6, .NET Standard 2.0 APIs only.

    /// <summary>A payload or frame that is not a valid encoding: where, and why.</summary>
    public sealed class DecodeException : Exception
    {
        public readonly string Where;
        public readonly string Reason;
        public DecodeException(string where, string reason) : base(where + ": " + reason)
        {
            Where = where;
            Reason = reason;
        }
    }

    /// <summary>A value its type cannot hold (a missing field, an undefined enum value).</summary>
    public sealed class EncodeException : Exception
    {
        public EncodeException(string where, string reason) : base(where + ": " + reason) { }
    }

    /// <summary>One frame: its header and its payload (not yet decoded).</summary>
    public sealed class Frame
    {
        public ushort Kind;
        public uint Seq;
        public bool Reply;
        /// <summary>The W3C trace context (16-byte trace id, 8-byte span id, flags), or null.</summary>
        public byte[] TraceContext;
        public byte[] Payload;
    }

    /// <summary>Frame constants and the encoder (docs/protocol.md, "Frame").</summary>
    public static class Wire
    {
        public const byte ProtocolVersion = 3;
        public const int FixedHeaderLen = 12;
        public const byte FlagTraceContext = 0x01;
        public const byte FlagReply = 0x02;
        public const int DefaultMaxFrameLen = 65536;

        /// <summary>A frame around a payload: length prefix, version, flags, kind and seq.</summary>
        public static byte[] EncodeFrame(ushort kind, uint seq, byte[] payload)
        {
            var frame = new byte[FixedHeaderLen + payload.Length];
            WriteU32(frame, 0, (uint)(8 + payload.Length));
            frame[4] = ProtocolVersion;
            frame[5] = 0;
            frame[6] = (byte)kind;
            frame[7] = (byte)(kind >> 8);
            WriteU32(frame, 8, seq);
            Buffer.BlockCopy(payload, 0, frame, FixedHeaderLen, payload.Length);
            return frame;
        }

        internal static void WriteU32(byte[] b, int at, uint v)
        {
            b[at] = (byte)v;
            b[at + 1] = (byte)(v >> 8);
            b[at + 2] = (byte)(v >> 16);
            b[at + 3] = (byte)(v >> 24);
        }

        internal static uint ReadU32(byte[] b, int at)
        {
            return (uint)(b[at] | b[at + 1] << 8 | b[at + 2] << 16 | b[at + 3] << 24);
        }
    }

    /// <summary>
    /// Cuts a byte stream into frames, checking each header as the server does. Push bytes as
    /// they arrive; Next returns a whole frame, null when more bytes are needed, or throws a
    /// DecodeException (then the stream is unusable: close it).
    /// </summary>
    public sealed class FrameReader
    {
        private byte[] buffer = new byte[0];
        private readonly int maxFrameLen;

        public FrameReader(int maxFrameLen = Wire.DefaultMaxFrameLen)
        {
            this.maxFrameLen = maxFrameLen;
        }

        public void Push(byte[] bytes, int offset, int count)
        {
            var joined = new byte[buffer.Length + count];
            Buffer.BlockCopy(buffer, 0, joined, 0, buffer.Length);
            Buffer.BlockCopy(bytes, offset, joined, buffer.Length, count);
            buffer = joined;
        }

        public Frame Next()
        {
            if (buffer.Length < 4) return null;
            long length = Wire.ReadU32(buffer, 0);
            if (length + 4 > maxFrameLen)
                throw new DecodeException("frame", "frame of " + (length + 4) + " bytes exceeds the maximum of " + maxFrameLen + " bytes");
            if (length < 8) throw new DecodeException("frame", "frame length " + length + " is shorter than its 8-byte header");
            if (buffer.Length < 5) return null;
            if (buffer[4] != Wire.ProtocolVersion)
                throw new DecodeException("frame", "unsupported protocol version " + buffer[4] + " (this client speaks version " + Wire.ProtocolVersion + ")");
            if (buffer.Length < 4 + length) return null;
            byte flags = buffer[5];
            if ((flags & ~(Wire.FlagTraceContext | Wire.FlagReply)) != 0)
                throw new DecodeException("frame", "reserved flag bits set: 0x" + flags.ToString("x2"));
            var frame = new Frame
            {
                Kind = (ushort)(buffer[6] | buffer[7] << 8),
                Seq = Wire.ReadU32(buffer, 8),
                Reply = (flags & Wire.FlagReply) != 0,
            };
            int start = Wire.FixedHeaderLen;
            if ((flags & Wire.FlagTraceContext) != 0)
            {
                if (length < 33) throw new DecodeException("frame", "frame length " + length + " is shorter than its 33-byte header");
                frame.TraceContext = new byte[25];
                Buffer.BlockCopy(buffer, 12, frame.TraceContext, 0, 25);
                start += 25;
            }
            int end = (int)(4 + length);
            frame.Payload = new byte[end - start];
            Buffer.BlockCopy(buffer, start, frame.Payload, 0, end - start);
            var rest = new byte[buffer.Length - end];
            Buffer.BlockCopy(buffer, end, rest, 0, rest.Length);
            buffer = rest;
            return frame;
        }
    }

    internal sealed class Reader
    {
        internal const int MaxDepth = 64;
        private static readonly UTF8Encoding Utf8 = new UTF8Encoding(false, true);
        private readonly byte[] b;

        internal Reader(byte[] bytes) { b = bytes; }

        internal int Length { get { return b.Length; } }

        internal void Check(long at, long size, string where)
        {
            if (at < 0 || at + size > b.Length)
                throw new DecodeException(where, size + " bytes at " + at + " run past the payload's " + b.Length);
        }

        internal void Depth(int depth, string where)
        {
            if (depth > MaxDepth) throw new DecodeException(where, "nested deeper than " + MaxDepth);
        }

        internal byte U8(int at, string where) { Check(at, 1, where); return b[at]; }
        internal sbyte I8(int at, string where) { Check(at, 1, where); return (sbyte)b[at]; }
        internal ushort U16(int at, string where) { Check(at, 2, where); return (ushort)(b[at] | b[at + 1] << 8); }
        internal short I16(int at, string where) { return (short)U16(at, where); }
        internal uint U32(int at, string where) { Check(at, 4, where); return Wire.ReadU32(b, at); }
        internal int I32(int at, string where) { return (int)U32(at, where); }
        internal ulong U64(int at, string where) { Check(at, 8, where); return Wire.ReadU32(b, at) | (ulong)Wire.ReadU32(b, at + 4) << 32; }
        internal long I64(int at, string where) { return (long)U64(at, where); }
        internal float F32(int at, string where) { return BitConverter.ToSingle(BitConverter.GetBytes(U32(at, where)), 0); }
        internal double F64(int at, string where) { return BitConverter.Int64BitsToDouble(I64(at, where)); }

        internal bool Bool(int at, string where)
        {
            byte v = U8(at, where);
            if (v > 1) throw new DecodeException(where, "bool byte " + v + " is neither 0 nor 1");
            return v == 1;
        }

        internal bool Some(int at, string where)
        {
            byte tag = U8(at, where);
            if (tag > 1) throw new DecodeException(where, "option tag " + tag + " is neither 0 nor 1");
            return tag == 1;
        }

        internal string Str(int at, string where)
        {
            Check(at, 8, where);
            int start, len;
            if ((b[at] & 0xc0) == 0x80)
            {
                uint raw = Wire.ReadU32(b, at);
                len = (int)((raw & 0x3f) | (raw >> 8) << 6);
                start = at + I32(at + 4, where);
                Check(start, len, where);
            }
            else
            {
                start = at;
                len = 0;
                while (len < 8 && b[at + len] != 0xff) len++;
            }
            try
            {
                return Utf8.GetString(b, start, len);
            }
            catch (ArgumentException)
            {
                throw new DecodeException(where, "string is not valid UTF-8");
            }
        }

        /// <summary>Where a vector's elements start, checked to lie in the payload.</summary>
        internal int VecStart(int at, int elementSize, string where, out int len)
        {
            int start = at + I32(at, where);
            len = (int)Math.Min(U32(at + 4, where), int.MaxValue);
            Check(start, (long)len * elementSize, where);
            return start;
        }

        internal byte[] Bytes(int at, string where)
        {
            int len;
            int start = VecStart(at, 1, where, out len);
            var out_ = new byte[len];
            Buffer.BlockCopy(b, start, out_, 0, len);
            return out_;
        }

        internal T[] Vec<T>(int at, int elementSize, string where, Func<int, T> read)
        {
            int len;
            int start = VecStart(at, elementSize, where, out len);
            var out_ = new T[len];
            for (int i = 0; i < len; i++) out_[i] = read(start + i * elementSize);
            return out_;
        }

        internal byte[] Fixed(int at, int len, string where)
        {
            Check(at, len, where);
            var out_ = new byte[len];
            Buffer.BlockCopy(b, at, out_, 0, len);
            return out_;
        }

        internal T[] Fixed<T>(int at, int len, int elementSize, string where, Func<int, T> read)
        {
            Check(at, (long)len * elementSize, where);
            var out_ = new T[len];
            for (int i = 0; i < len; i++) out_[i] = read(at + i * elementSize);
            return out_;
        }

        internal int Box(int at, string where) { return at + I32(at, where); }
    }

    internal sealed class StrRes { internal byte[] Encoded; internal int Pos; }
    internal sealed class VecRes { internal int Pos; internal int Len; }

    internal sealed class Writer
    {
        private static readonly UTF8Encoding Utf8 = new UTF8Encoding(false, true);
        internal byte[] Buf = new byte[256];
        internal int Len;

        internal int Reserve(int n)
        {
            int at = Len;
            if (at + n > Buf.Length)
            {
                var grown = new byte[Math.Max(Buf.Length * 2, at + n)];
                Buffer.BlockCopy(Buf, 0, grown, 0, at);
                Buf = grown;
            }
            Array.Clear(Buf, at, n);
            Len = at + n;
            return at;
        }

        internal byte[] ToArray()
        {
            var out_ = new byte[Len];
            Buffer.BlockCopy(Buf, 0, out_, 0, Len);
            return out_;
        }

        internal void U8(int at, byte v) { Buf[at] = v; }
        internal void U16(int at, ushort v) { Buf[at] = (byte)v; Buf[at + 1] = (byte)(v >> 8); }
        internal void U32(int at, uint v) { Wire.WriteU32(Buf, at, v); }
        internal void U64(int at, ulong v) { U32(at, (uint)v); U32(at + 4, (uint)(v >> 32)); }
        internal void F32(int at, float v) { U32(at, BitConverter.ToUInt32(BitConverter.GetBytes(v), 0)); }
        internal void F64(int at, double v) { U64(at, (ulong)BitConverter.DoubleToInt64Bits(v)); }
        internal void Bool(int at, bool v) { Buf[at] = (byte)(v ? 1 : 0); }

        internal static T Need<T>(T v, string where) where T : class
        {
            if (v == null) throw new EncodeException(where, "is null");
            return v;
        }

        internal object DepsStr(string v, string where)
        {
            var encoded = Utf8.GetBytes(Need(v, where));
            if (encoded.Length <= 8) return new StrRes { Encoded = encoded, Pos = -1 };
            if (encoded.Length > 0x3fffffff) throw new EncodeException(where, "string too long");
            int pos = Reserve(encoded.Length);
            Buffer.BlockCopy(encoded, 0, Buf, pos, encoded.Length);
            return new StrRes { Encoded = encoded, Pos = pos };
        }

        internal void PlaceStr(int at, object res)
        {
            var s = (StrRes)res;
            if (s.Pos < 0)
            {
                for (int i = 0; i < 8; i++) Buf[at + i] = 0xff;
                Buffer.BlockCopy(s.Encoded, 0, Buf, at, s.Encoded.Length);
            }
            else
            {
                int len = s.Encoded.Length;
                U32(at, (uint)(0x80 | (len & 0x3f) | (len >> 6) << 8));
                U32(at + 4, (uint)(s.Pos - at));
            }
        }

        internal object DepsBytes(byte[] v, string where)
        {
            Need(v, where);
            int pos = Reserve(v.Length);
            Buffer.BlockCopy(v, 0, Buf, pos, v.Length);
            return new VecRes { Pos = pos, Len = v.Length };
        }

        internal object DepsVec<T>(T[] v, int size, string where, Func<T, object> deps, Action<int, T, object> place)
        {
            Need(v, where);
            var resolvers = new object[v.Length];
            for (int i = 0; i < v.Length; i++) resolvers[i] = deps(v[i]);
            int pos = Reserve(size * v.Length);
            for (int i = 0; i < v.Length; i++) place(pos + i * size, v[i], resolvers[i]);
            return new VecRes { Pos = pos, Len = v.Length };
        }

        internal void PlaceVec(int at, object res)
        {
            var v = (VecRes)res;
            U32(at, (uint)(v.Pos - at));
            U32(at + 4, (uint)v.Len);
        }

        internal object DepsFixed<T>(T[] v, int len, string where, Func<T, object> deps)
        {
            if (Need(v, where).Length != len) throw new EncodeException(where, "expected " + len + " elements, got " + v.Length);
            var resolvers = new object[len];
            for (int i = 0; i < len; i++) resolvers[i] = deps(v[i]);
            return resolvers;
        }

        internal void PlaceFixed<T>(int at, T[] v, int size, object res, Action<int, T, object> place)
        {
            var resolvers = (object[])res;
            for (int i = 0; i < v.Length; i++) place(at + i * size, v[i], resolvers[i]);
        }

        internal object DepsBox<T>(T v, int size, Func<T, object> deps, Action<int, T, object> place)
        {
            var inner = deps(v);
            int pos = Reserve(size);
            place(pos, v, inner);
            return pos;
        }

        internal void PlaceBox(int at, object res) { U32(at, (uint)((int)res - at)); }
    }

    internal static class Json
    {
        internal static void Str(StringBuilder sb, string v)
        {
            sb.Append('"');
            foreach (char c in v)
            {
                if (c == '"') sb.Append("\\\"");
                else if (c == '\\') sb.Append("\\\\");
                else if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4"));
                else sb.Append(c);
            }
            sb.Append('"');
        }

        internal static void List<T>(StringBuilder sb, T[] v, Action<T> each)
        {
            sb.Append('[');
            for (int i = 0; i < v.Length; i++)
            {
                if (i > 0) sb.Append(',');
                each(v[i]);
            }
            sb.Append(']');
        }

        internal static string Num(IFormattable v) { return v.ToString(null, CultureInfo.InvariantCulture); }
    }

    // ---- end of the runtime ----
