namespace JobRunner;

/// <summary>The stream a log line came from.</summary>
public enum LogStream
{
    /// <summary>Standard output, or a workload's normal log line.</summary>
    Output = 0,

    /// <summary>Standard error.</summary>
    Error = 1,

    /// <summary>A line JobRunner wrote about the attempt (start, retry, timeout).</summary>
    System = 2,
}

/// <summary>A log line as a writer hands it to the log store.</summary>
/// <param name="Timestamp">When it was written.</param>
/// <param name="Stream">The stream it came from.</param>
/// <param name="Message">The text, without a line break.</param>
public readonly record struct LogLine(DateTimeOffset Timestamp, LogStream Stream, string Message);

/// <summary>One stored log line of a job.</summary>
/// <param name="Offset">The line's position in the job's log, starting at 0.</param>
/// <param name="Attempt">The attempt that wrote it.</param>
/// <param name="Timestamp">When it was written.</param>
/// <param name="Stream">The stream it came from.</param>
/// <param name="Message">The text, without a line break.</param>
public sealed record LogEntry(long Offset, int Attempt, DateTimeOffset Timestamp, LogStream Stream, string Message);

/// <summary>What to read from a job's log.</summary>
public sealed record LogQuery
{
    /// <summary>Gets the attempt to read; <see langword="null"/> reads all.</summary>
    public int? Attempt { get; init; }

    /// <summary>Gets the offset of the first line to return.</summary>
    /// <value>The default value is 0.</value>
    public long Offset { get; init; }

    /// <summary>Gets the largest number of lines to return, from 1 to 10,000.</summary>
    /// <value>The default value is 1,000.</value>
    public int Limit { get; init; } = 1000;

    /// <summary>Gets the earliest timestamp to return; <see langword="null"/> for all.</summary>
    public DateTimeOffset? Since { get; init; }
}

/// <summary>A page of log lines.</summary>
/// <param name="Entries">The lines.</param>
/// <param name="NextOffset">The offset to read from next.</param>
/// <param name="DroppedLines">How many lines of this job the store dropped to stay within its bounds.</param>
public sealed record LogPage(IReadOnlyList<LogEntry> Entries, long NextOffset, long DroppedLines);
