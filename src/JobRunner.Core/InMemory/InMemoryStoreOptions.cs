namespace JobRunner;

/// <summary>Settings of the in-memory store and log store, the embedded defaults.</summary>
public sealed class InMemoryStoreOptions
{
    /// <summary>Gets or sets how many finished jobs are kept; beyond it the oldest finished jobs and their logs are removed.</summary>
    /// <value>The default value is 100,000.</value>
    public int MaxFinishedJobs { get; set; } = 100_000;

    /// <summary>Gets or sets how many log lines are kept per job; beyond it the oldest lines are dropped and counted.</summary>
    /// <value>The default value is 10,000.</value>
    public int MaxLogLinesPerJob { get; set; } = 10_000;
}
