namespace JobRunner.Testing;

/// <summary>
/// An <see cref="IJobStore"/> that forwards every call to another store. Derive from it to observe or fault a store in
/// tests and benchmarks (count completions, signal renewals, inject errors) without writing every member.
/// </summary>
public abstract class DelegatingJobStore : IJobStore
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="inner">The store to forward to.</param>
    protected DelegatingJobStore(IJobStore inner)
    {
        ArgumentNullException.ThrowIfNull(inner);
        Inner = inner;
    }

    /// <summary>Gets the store calls are forwarded to.</summary>
    protected IJobStore Inner { get; }

    /// <inheritdoc />
    public virtual ValueTask<SubmitResult> InsertAsync(JobRecord job, CancellationToken cancellationToken) => Inner.InsertAsync(job, cancellationToken);

    /// <summary>Forwards a bulk insert to <see cref="Inner"/> as one call (not through <see cref="InsertAsync"/>): override both to observe every insert.</summary>
    /// <param name="jobs">The jobs.</param>
    /// <param name="cancellationToken">Cancels the insert.</param>
    /// <returns>One result per job, in order.</returns>
    public virtual ValueTask<IReadOnlyList<SubmitResult>> InsertManyAsync(IReadOnlyList<JobRecord> jobs, CancellationToken cancellationToken)
        => Inner.InsertManyAsync(jobs, cancellationToken);

    /// <inheritdoc />
    public virtual ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken) => Inner.GetAsync(id, cancellationToken);

    /// <inheritdoc />
    public virtual ValueTask<JobPage> ListAsync(JobQuery query, CancellationToken cancellationToken) => Inner.ListAsync(query, cancellationToken);

    /// <inheritdoc />
    public virtual ValueTask<LeasedJob?> TryAcquireLeaseAsync(JobId id, string workerId, TimeSpan duration, CancellationToken cancellationToken)
        => Inner.TryAcquireLeaseAsync(id, workerId, duration, cancellationToken);

    /// <inheritdoc />
    public virtual ValueTask<IReadOnlyList<JobId>> RenewLeasesAsync(IReadOnlyList<JobLease> leases, TimeSpan duration, CancellationToken cancellationToken)
        => Inner.RenewLeasesAsync(leases, duration, cancellationToken);

    /// <inheritdoc />
    public virtual ValueTask SaveCheckpointAsync(JobLease lease, ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken)
        => Inner.SaveCheckpointAsync(lease, checkpoint, cancellationToken);

    /// <inheritdoc />
    public virtual ValueTask ReportProgressAsync(JobLease lease, JobProgress progress, CancellationToken cancellationToken)
        => Inner.ReportProgressAsync(lease, progress, cancellationToken);

    /// <inheritdoc />
    public virtual ValueTask<JobState> CompleteAttemptAsync(JobLease lease, AttemptCompletion completion, CancellationToken cancellationToken)
        => Inner.CompleteAttemptAsync(lease, completion, cancellationToken);

    /// <inheritdoc />
    public virtual ValueTask<JobRecord> RequestCancellationAsync(JobId id, string? reason, CancellationToken cancellationToken)
        => Inner.RequestCancellationAsync(id, reason, cancellationToken);

    /// <inheritdoc />
    public virtual ValueTask<JobRecord> RequeueAsync(JobId id, CancellationToken cancellationToken)
        => Inner.RequeueAsync(id, cancellationToken);

    /// <inheritdoc />
    public virtual ValueTask<IReadOnlyList<JobRecord>> ReclaimExpiredLeasesAsync(CancellationToken cancellationToken)
        => Inner.ReclaimExpiredLeasesAsync(cancellationToken);
}
