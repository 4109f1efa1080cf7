namespace JobRunner;

/// <summary>Settings of the in-memory store and log store, the embedded defaults.</summary>
public sealed class InMemoryStoreOptions
{
    /// <summary>Gets or sets how many finished jobs are kept; beyond it the oldest finished jobs and their logs are removed.</summary>
    /// <remarks>
    /// Every kept job outlives garbage collections, and at high rates that sets the length of the pauses, hence the
    /// latency tail: at ~120,000 jobs/s on two cores, 100,000 kept jobs meant ~3 ms pauses and a p99 enqueue → start of
    /// 8–25 ms, 1,000 meant ~0.9 ms pauses and 1.0–2.2 ms (see benchmarks/RESULTS.md).
    /// </remarks>
    /// <value>The default value is 100,000.</value>
    public int MaxFinishedJobs { get; set; } = 100_000;

    /// <summary>Gets or sets how many log lines are kept per job; beyond it the oldest lines are dropped and counted.</summary>
    /// <value>The default value is 10,000.</value>
    public int MaxLogLinesPerJob { get; set; } = 10_000;
}
