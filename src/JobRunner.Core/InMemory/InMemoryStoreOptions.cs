namespace JobRunner;

/// <summary>Settings of the in-memory store and log store, the embedded defaults.</summary>
public sealed class InMemoryStoreOptions
{
    /// <summary>Gets or sets how many finished jobs are kept; beyond it the oldest finished jobs and their logs are removed.</summary>
    /// <remarks>
    /// A finished job is kept packed as bytes in shared chunks, not as objects, unless it was read while it ran, or has a
    /// checkpoint, progress, a cancellation, an earlier attempt or a retry policy of its own. Kept objects would outlive
    /// garbage collections and, at high rates, set the length of the pauses: 100,000 jobs kept as objects meant ~3 ms
    /// pauses and a p99 enqueue → start of 6–27 ms at ~150,000 jobs/s on two cores; packed, ~0.5 ms and 0.6–1.0 ms (see
    /// benchmarks/RESULTS.md). Reading a packed job builds its record (and a copy of its input) for that reader.
    /// </remarks>
    /// <value>The default value is 100,000.</value>
    public int MaxFinishedJobs { get; set; } = 100_000;

    /// <summary>Gets or sets how many log lines are kept per job; beyond it the oldest lines are dropped and counted.</summary>
    /// <value>The default value is 10,000.</value>
    public int MaxLogLinesPerJob { get; set; } = 10_000;
}
