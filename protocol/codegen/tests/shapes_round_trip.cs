// Every payload in shapes.fixtures (written by rkyv, see examples/shapes.rs) decoded with the
// generated Shapes.cs and encoded again must give the same bytes.
//
//   mcs -out:rt.exe Shapes.cs shapes_round_trip.cs && mono rt.exe shapes.fixtures

using System;
using System.IO;
using Garrison.Shapes;

static class ShapesRoundTrip
{
    static int Main(string[] args)
    {
        int checkedCount = 0, failures = 0;
        foreach (var line in File.ReadAllLines(args[0]))
        {
            var parts = line.Split(' ');
            var payload = new byte[parts[1].Length / 2];
            for (int i = 0; i < payload.Length; i++) payload[i] = Convert.ToByte(parts[1].Substring(i * 2, 2), 16);
            var decoded = Codec.DecodeShapes(new Frame { Kind = ushort.Parse(parts[0]), Payload = payload });
            var again = Codec.Payload(decoded);
            var same = again.Length == payload.Length;
            for (int i = 0; same && i < payload.Length; i++) same = again[i] == payload[i];
            if (!same)
            {
                failures++;
                Console.WriteLine("FAILED: kind " + parts[0] + ": " + Codec.ToPlain(decoded) + " re-encoded to other bytes");
            }
            checkedCount++;
        }
        Console.WriteLine("C# shapes: " + checkedCount + " payloads round-tripped, " + failures + " failures");
        return failures == 0 && checkedCount >= 5 ? 0 : 1;
    }
}
