using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Security.Cryptography;

namespace JobRunner;

/// <summary>Identifies a job. Ids are version 7 GUIDs, so they sort by creation time.</summary>
/// <param name="Value">The underlying GUID.</param>
public readonly record struct JobId(Guid Value) : IComparable<JobId>, ISpanFormattable
{
    /// <summary>Creates a new id whose time part comes from <paramref name="timeProvider"/>.</summary>
    /// <param name="timeProvider">The clock that stamps the id.</param>
    /// <returns>A new, unique id.</returns>
    public static JobId New(TimeProvider timeProvider)
    {
        ArgumentNullException.ThrowIfNull(timeProvider);
        return new JobId(Version7.Create(timeProvider.GetUtcNow()));
    }

    /// <summary>Parses an id written by <see cref="ToString()"/>.</summary>
    /// <param name="value">The text to parse.</param>
    /// <returns>The parsed id.</returns>
    /// <exception cref="FormatException"><paramref name="value"/> is not a job id.</exception>
    public static JobId Parse(string value) => new(Guid.Parse(value));

    /// <summary>Tries to parse an id written by <see cref="ToString()"/>.</summary>
    /// <param name="value">The text to parse.</param>
    /// <param name="id">The parsed id.</param>
    /// <returns><see langword="true"/> when <paramref name="value"/> is a job id.</returns>
    public static bool TryParse([NotNullWhen(true)] string? value, out JobId id)
    {
        var ok = Guid.TryParse(value, out var guid);
        id = new JobId(guid);
        return ok;
    }

    /// <inheritdoc />
    public int CompareTo(JobId other) => Value.CompareTo(other.Value);

    /// <inheritdoc />
    public override string ToString() => Value.ToString("D");

    /// <inheritdoc />
    public string ToString(string? format, IFormatProvider? formatProvider) => Value.ToString(format ?? "D", formatProvider);

    /// <inheritdoc />
    public bool TryFormat(Span<char> destination, out int charsWritten, ReadOnlySpan<char> format, IFormatProvider? provider)
        => Value.TryFormat(destination, out charsWritten, format.IsEmpty ? "D" : format);

    /// <summary>Compares two ids by their GUID order.</summary>
    public static bool operator <(JobId left, JobId right) => left.CompareTo(right) < 0;

    /// <summary>Compares two ids by their GUID order.</summary>
    public static bool operator >(JobId left, JobId right) => left.CompareTo(right) > 0;

    /// <summary>Compares two ids by their GUID order.</summary>
    public static bool operator <=(JobId left, JobId right) => left.CompareTo(right) <= 0;

    /// <summary>Compares two ids by their GUID order.</summary>
    public static bool operator >=(JobId left, JobId right) => left.CompareTo(right) >= 0;

    /// <summary>
    /// Version 7 GUIDs (RFC 9562) from cryptographically secure random bits read 32 ids' worth at a time per thread:
    /// <see cref="Guid.CreateVersion7(DateTimeOffset)"/> asks the operating system for 16 random bytes on every call,
    /// which costs a system call per submitted job.
    /// </summary>
    private static class Version7
    {
        private const int BufferSize = 512;

        [ThreadStatic]
        private static byte[]? t_random;

        [ThreadStatic]
        private static int t_used;

        public static Guid Create(DateTimeOffset timestamp)
        {
            var milliseconds = timestamp.ToUnixTimeMilliseconds();
            if (milliseconds < 0 || milliseconds > 0xFFFF_FFFF_FFFF)
            {
                throw new ArgumentOutOfRangeException(nameof(timestamp), timestamp, "A version 7 id holds times from 1970 to about 10889.");
            }

            var random = t_random;
            if (random is null || t_used == BufferSize)
            {
                random ??= t_random = new byte[BufferSize];
                RandomNumberGenerator.Fill(random);
                t_used = 0;
            }

            var bits = random.AsSpan(t_used, 16);
            t_used += 16;

            // 48 bits of Unix milliseconds, the version (7), 12 random bits, the variant (binary 10), 62 random bits.
            Span<byte> bytes = stackalloc byte[16];
            BinaryPrimitives.WriteUInt16BigEndian(bytes, (ushort)(milliseconds >> 32));
            BinaryPrimitives.WriteUInt32BigEndian(bytes[2..], (uint)milliseconds);
            bytes[6] = (byte)(0x70 | (bits[6] & 0x0F));
            bytes[7] = bits[7];
            bytes[8] = (byte)(0x80 | (bits[8] & 0x3F));
            bits[9..].CopyTo(bytes[9..]);
            bits.Clear();
            return new Guid(bytes, bigEndian: true);
        }
    }
}
