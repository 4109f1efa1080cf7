using JobRunner;

namespace JobRunner.Benchmarks;

/// <summary>Signals when a given number of attempts have been completed in the store.</summary>
internal sealed class CompletionCounter
{
    private int _remaining;
    private TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task Expect(int count)
    {
        _done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _remaining, count);
        return _done.Task;
    }

    public void Completed()
    {
        if (Interlocked.Decrement(ref _remaining) == 0)
        {
            _done.TrySetResult();
        }
    }
}

/// <summary>Forwards to the real store and counts completions.</summary>
internal sealed class CountingStore(IJobStore inner, CompletionCounter counter) : IJobStore
{
    public ValueTask<SubmitResult> InsertAsync(JobRecord job, CancellationToken cancellationToken) => inner.InsertAsync(job, cancellationToken);

    public ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken) => inner.GetAsync(id, cancellationToken);

    public ValueTask<JobPage> ListAsync(JobQuery query, CancellationToken cancellationToken) => inner.ListAsync(query, cancellationToken);

    public ValueTask<LeasedJob?> TryAcquireLeaseAsync(JobId id, string workerId, TimeSpan duration, CancellationToken cancellationToken)
        => inner.TryAcquireLeaseAsync(id, workerId, duration, cancellationToken);

    public ValueTask<IReadOnlyList<JobId>> RenewLeasesAsync(IReadOnlyList<JobLease> leases, TimeSpan duration, CancellationToken cancellationToken)
        => inner.RenewLeasesAsync(leases, duration, cancellationToken);

    public ValueTask SaveCheckpointAsync(JobLease lease, ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken)
        => inner.SaveCheckpointAsync(lease, checkpoint, cancellationToken);

    public ValueTask ReportProgressAsync(JobLease lease, JobProgress progress, CancellationToken cancellationToken)
        => inner.ReportProgressAsync(lease, progress, cancellationToken);

    public async ValueTask<JobRecord> CompleteAttemptAsync(JobLease lease, AttemptCompletion completion, CancellationToken cancellationToken)
    {
        var job = await inner.CompleteAttemptAsync(lease, completion, cancellationToken).ConfigureAwait(false);
        counter.Completed();
        return job;
    }

    public ValueTask<JobRecord> RequestCancellationAsync(JobId id, string? reason, CancellationToken cancellationToken)
        => inner.RequestCancellationAsync(id, reason, cancellationToken);

    public ValueTask<IReadOnlyList<JobRecord>> ReclaimExpiredLeasesAsync(CancellationToken cancellationToken)
        => inner.ReclaimExpiredLeasesAsync(cancellationToken);
}
