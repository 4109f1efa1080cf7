using System.Collections.Concurrent;
using JobRunner;
using JobRunner.Testing;

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

/// <summary>Forwards to the real store and counts completions; optionally records the tenant of each job started, in order.</summary>
internal sealed class CountingStore(IJobStore inner, CompletionCounter counter, ConcurrentQueue<string>? order = null) : DelegatingJobStore(inner)
{
    public override async ValueTask<LeasedJob?> TryAcquireLeaseAsync(JobId id, string workerId, TimeSpan duration, CancellationToken cancellationToken)
    {
        var leased = await Inner.TryAcquireLeaseAsync(id, workerId, duration, cancellationToken).ConfigureAwait(false);
        if (leased is not null)
        {
            order?.Enqueue(leased.Request.Tenant);
        }

        return leased;
    }

    public override async ValueTask<JobState> CompleteAttemptAsync(JobLease lease, AttemptCompletion completion, CancellationToken cancellationToken)
    {
        var state = await Inner.CompleteAttemptAsync(lease, completion, cancellationToken).ConfigureAwait(false);
        counter.Completed();
        return state;
    }
}
