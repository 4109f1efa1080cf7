namespace JobRunner.Worker;

/// <summary>
/// Where an attempt's checkpoints go: into the job record through <see cref="IJobStore"/>, or, when the host registered
/// an <see cref="ICheckpointStore"/>, into that store. The job store stays the authority on leases: before a save to a
/// checkpoint store the lease is renewed through the job store, so a writer whose lease was taken over is refused with
/// <see cref="StaleFenceTokenException"/> before it writes. The checkpoint store itself never lets an older fence
/// replace a newer one.
/// </summary>
internal sealed class CheckpointRouter(IJobStore store, ICheckpointStore? checkpoints, IJobEventBus events, TimeProvider time, TimeSpan leaseDuration)
{
    /// <summary>Reads the checkpoint an attempt starts from: the checkpoint store's newest valid one, else the record's.</summary>
    public async ValueTask<ReadOnlyMemory<byte>?> LoadAsync(LeasedJob job, CancellationToken cancellationToken)
    {
        if (checkpoints is null)
        {
            return job.Checkpoint;
        }

        var stored = await checkpoints.LoadAsync(job.Lease.JobId, cancellationToken).ConfigureAwait(false);

        // A record checkpoint written before the host registered the checkpoint store still counts.
        return stored is null ? job.Checkpoint : stored.Data;
    }

    public async ValueTask SaveAsync(LeasedJob job, ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken)
    {
        var lease = job.Lease;
        if (checkpoints is null)
        {
            await store.SaveCheckpointAsync(lease, checkpoint, cancellationToken).ConfigureAwait(false);
            return;
        }

        var lost = await store.RenewLeasesAsync([lease], leaseDuration, cancellationToken).ConfigureAwait(false);
        if (lost.Count != 0)
        {
            throw new StaleFenceTokenException(lease.JobId, lease.FenceToken, currentToken: null, "the lease was lost before the checkpoint was saved");
        }

        await checkpoints.SaveAsync(lease, checkpoint, cancellationToken).ConfigureAwait(false);
        if (events.IsWatched(JobEventKind.Checkpointed))
        {
            events.Publish(JobEvent.ForAttempt(JobEventKind.Checkpointed, lease.JobId, job.Request.Tenant, job.Request.Workload, time.GetUtcNow(), lease.Attempt));
        }
    }
}
