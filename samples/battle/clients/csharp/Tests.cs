// The generated C# battle codecs (Battle.cs) against the golden fixtures the Rust side writes
// (samples/battle/clients/fixtures.json): every good message decodes to the value written beside
// it and encodes back to exactly rkyv's bytes; every bad payload is a DecodeException; frames are
// cut and checked as the server does. Built with Mono's mcs (C# 6), run on mono:
//
//   mcs -out:tests.exe Battle.cs Tests.cs && mono tests.exe ../fixtures.json ../../schema.json

using System;
using System.IO;
using System.Text.RegularExpressions;
using Garrison.Battle;

static class Tests
{
    static int failures;

    static void Check(bool ok, string what)
    {
        if (!ok)
        {
            failures++;
            Console.WriteLine("FAILED: " + what);
        }
    }

    static byte[] Hex(string hex)
    {
        var bytes = new byte[hex.Length / 2];
        for (int i = 0; i < bytes.Length; i++) bytes[i] = Convert.ToByte(hex.Substring(i * 2, 2), 16);
        return bytes;
    }

    static bool Same(byte[] a, byte[] b)
    {
        if (a.Length != b.Length) return false;
        for (int i = 0; i < a.Length; i++) if (a[i] != b[i]) return false;
        return true;
    }

    static object Decode(string protocol, ushort kind, byte[] payload)
    {
        var frame = new Frame { Kind = kind, Payload = payload };
        switch (protocol)
        {
            case "Control": return Codec.DecodeControl(frame);
            case "ClientMessage": return Codec.DecodeClientMessage(frame);
            default: return Codec.DecodeServerMessage(frame);
        }
    }

    static void Throws<T>(Action action, string what) where T : Exception
    {
        try
        {
            action();
            Check(false, what + ": nothing thrown");
        }
        catch (T)
        {
        }
        catch (Exception other)
        {
            Check(false, what + ": " + other.GetType().Name + ": " + other.Message);
        }
    }

    static int Main(string[] args)
    {
        var fixtures = File.ReadAllText(args[0]);
        var schema = File.ReadAllText(args[1]);

        var good = new Regex("\\{ \"protocol\": \"(\\w+)\", \"message\": \"(\\w+)\", \"kind\": (\\d+), \"payload\": \"([0-9a-f]*)\",\\n\\s*\"value\": (.*) \\},?\\n");
        int goods = 0;
        foreach (Match m in good.Matches(fixtures))
        {
            goods++;
            string protocol = m.Groups[1].Value, message = m.Groups[2].Value;
            var kind = ushort.Parse(m.Groups[3].Value);
            var payload = Hex(m.Groups[4].Value);
            var decoded = Decode(protocol, kind, payload);
            var plain = Codec.ToPlain(decoded);
            Check(plain == m.Groups[5].Value, message + ": decoded " + plain + ", expected " + m.Groups[5].Value);
            Check(Same(Codec.Payload(decoded), payload), message + ": re-encoded bytes differ");
            // Cutting the front moves the root: another value or a DecodeException, nothing else.
            for (int cut = 1; cut <= payload.Length; cut++)
            {
                var shorter = new byte[payload.Length - cut];
                Buffer.BlockCopy(payload, cut, shorter, 0, shorter.Length);
                try
                {
                    Decode(protocol, kind, shorter);
                }
                catch (DecodeException)
                {
                }
                catch (Exception other)
                {
                    Check(false, message + " cut " + cut + ": " + other.GetType().Name + ": " + other.Message);
                }
            }
        }
        Check(goods >= 15, "only " + goods + " good fixtures found");

        var bad = new Regex("\\{ \"protocol\": \"(\\w+)\", \"message\": \"(\\w+)\", \"kind\": (\\d+), \"why\": \"([^\"]*)\", \"payload\": \"([0-9a-f]*)\" \\}");
        int bads = 0;
        foreach (Match m in bad.Matches(fixtures))
        {
            bads++;
            string protocol = m.Groups[1].Value;
            var kind = ushort.Parse(m.Groups[3].Value);
            var payload = Hex(m.Groups[5].Value);
            Throws<DecodeException>(() => Decode(protocol, kind, payload), m.Groups[2].Value + ": " + m.Groups[4].Value);
        }
        Check(bads >= 5, "only " + bads + " bad fixtures found");
        Throws<DecodeException>(() => Codec.DecodeServerMessage(new Frame { Kind = 0x0999, Payload = new byte[4] }), "an unknown kind");

        // Frames: cut from a stream fed byte by byte; a stale version and reserved flags refused.
        var first = Codec.EncodeInput(new PlayerInput { Frame = 7, Buttons = 3 }, 1);
        var second = Codec.EncodeJoin(new Join { Mode = 0, Updates = Updates.Inputs }, 2);
        var reader = new FrameReader();
        int seen = 0;
        foreach (var stream in new[] { first, second })
        {
            foreach (var b in stream)
            {
                reader.Push(new[] { b }, 0, 1);
                for (var frame = reader.Next(); frame != null; frame = reader.Next())
                {
                    seen++;
                    Check(frame.Seq == (uint)seen, "frame " + seen + " has seq " + frame.Seq);
                    if (seen == 1)
                    {
                        var input = Codec.DecodeInput(frame.Payload);
                        Check(input.Frame == 7 && input.Buttons == 3, "the input frame's payload");
                    }
                }
            }
        }
        Check(seen == 2, seen + " frames cut from the stream");
        var stale = (byte[])first.Clone();
        stale[4] = 2;
        var staleReader = new FrameReader();
        staleReader.Push(stale, 0, stale.Length);
        Throws<DecodeException>(() => staleReader.Next(), "a version-2 frame");
        var flagged = (byte[])first.Clone();
        flagged[5] = 0x80;
        var flaggedReader = new FrameReader();
        flaggedReader.Push(flagged, 0, flagged.Length);
        Throws<DecodeException>(() => flaggedReader.Next(), "reserved flag bits");

        // The encoder refuses what the type cannot hold.
        Throws<EncodeException>(() => Codec.EncodeJoin(new Join { Mode = 0, Updates = (Updates)7 }), "an undefined enum value");
        Throws<EncodeException>(() => Codec.EncodeClose(new Close { Code = 1, Reason = null }), "a null string");
        Throws<EncodeException>(() => Codec.EncodeHello(new Hello { Ticket = new Ticket { Mac = new byte[31] } }), "a 31-byte mac");

        var hash = Regex.Match(schema, "^  \"layout_hash\": \"([0-9a-f]{16})\"", RegexOptions.Multiline).Groups[1].Value;
        Check(Codec.LayoutHash == Convert.ToUInt64(hash, 16), "the layout hash " + Codec.LayoutHash.ToString("x16") + " is not the schema's " + hash);

        Console.WriteLine("C#: " + goods + " good fixtures decoded and re-encoded, " + bads + " bad ones refused, " + failures + " failures");
        return failures == 0 ? 0 : 1;
    }
}
