namespace JobRunner;

/// <summary>Keeps the log lines of jobs, readable after the job finished.</summary>
public interface ILogStore
{
    /// <summary>Appends lines written by the attempt holding <paramref name="lease"/>.</summary>
    /// <param name="lease">The writer's lease.</param>
    /// <param name="lines">The lines, in order.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>The stored entries, with their offsets.</returns>
    ValueTask<IReadOnlyList<LogEntry>> AppendAsync(JobLease lease, IReadOnlyList<LogLine> lines, CancellationToken cancellationToken);

    /// <summary>Reads one page of a job's log.</summary>
    /// <param name="jobId">The job.</param>
    /// <param name="query">What to read.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The page; empty when the job has no log.</returns>
    ValueTask<LogPage> ReadAsync(JobId jobId, LogQuery query, CancellationToken cancellationToken);
}
