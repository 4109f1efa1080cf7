using System.Diagnostics.CodeAnalysis;

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
        return new JobId(Guid.CreateVersion7(timeProvider.GetUtcNow()));
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
}
