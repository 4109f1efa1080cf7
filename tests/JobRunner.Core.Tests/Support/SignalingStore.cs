using System.Threading.Channels;

namespace JobRunner.Tests.Support;

/// <summary>Forwards to a real store and reports lease renewals, so tests can wait for a heartbeat instead of sleeping.</summary>
public sealed class SignalingStore(IJobStore inner) : IJobStore
{
    public Channel<IReadOnlyList<JobLease>> Renewals { get; } = Channel.CreateUnbounded<IReadOnlyList<JobLease>>();

    public ValueTask<SubmitResult> InsertAsync(JobRecord job, CancellationToken cancellationToken) => inner.InsertAsync(job, cancellationToken);

    public ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken) => inner.GetAsync(id, cancellationToken);

    public ValueTask<JobPage> ListAsync(JobQuery query, CancellationToken cancellationToken) => inner.ListAsync(query, cancellationToken);

    public ValueTask<LeasedJob?> TryAcquireLeaseAsync(JobId id, string workerId, TimeSpan duration, CancellationToken cancellationToken)
        => inner.TryAcquireLeaseAsync(id, workerId, duration, cancellationToken);

    public async ValueTask<IReadOnlyList<JobId>> RenewLeasesAsync(IReadOnlyList<JobLease> leases, TimeSpan duration, CancellationToken cancellationToken)
    {
        var lost = await inner.RenewLeasesAsync(leases, duration, cancellationToken);
        Renewals.Writer.TryWrite(leases);
        return lost;
    }

    public ValueTask SaveCheckpointAsync(JobLease lease, ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken)
        => inner.SaveCheckpointAsync(lease, checkpoint, cancellationToken);

    public ValueTask ReportProgressAsync(JobLease lease, JobProgress progress, CancellationToken cancellationToken)
        => inner.ReportProgressAsync(lease, progress, cancellationToken);

    public ValueTask<JobRecord> CompleteAttemptAsync(JobLease lease, AttemptCompletion completion, CancellationToken cancellationToken)
        => inner.CompleteAttemptAsync(lease, completion, cancellationToken);

    public ValueTask<JobRecord> RequestCancellationAsync(JobId id, string? reason, CancellationToken cancellationToken)
        => inner.RequestCancellationAsync(id, reason, cancellationToken);

    public ValueTask<IReadOnlyList<JobRecord>> ReclaimExpiredLeasesAsync(CancellationToken cancellationToken)
        => inner.ReclaimExpiredLeasesAsync(cancellationToken);
}
