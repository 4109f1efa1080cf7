namespace JobRunner;

/// <summary>
/// Keeps checkpoints outside the job store (for example large ones in object storage). Every save carries the writer's
/// <see cref="JobLease"/>: a store keeps checkpoints by fence token, so the newest valid one wins and a writer whose
/// lease is stale can never replace a checkpoint written under a newer lease.
/// </summary>
public interface ICheckpointStore
{
    /// <summary>Saves a checkpoint for the attempt holding <paramref name="lease"/>.</summary>
    /// <param name="lease">The writer's lease.</param>
    /// <param name="checkpoint">The checkpoint.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the checkpoint is stored.</returns>
    /// <exception cref="StaleFenceTokenException">A checkpoint with a newer fence token exists; nothing changed.</exception>
    ValueTask SaveAsync(JobLease lease, ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken);

    /// <summary>Reads the newest valid checkpoint of a job.</summary>
    /// <param name="jobId">The job.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The checkpoint, or <see langword="null"/> when the job has none.</returns>
    ValueTask<StoredCheckpoint?> LoadAsync(JobId jobId, CancellationToken cancellationToken);
}

/// <summary>A checkpoint as a <see cref="ICheckpointStore"/> returns it.</summary>
/// <param name="FenceToken">The fence token of the lease that wrote it.</param>
/// <param name="Attempt">The attempt that wrote it.</param>
/// <param name="Data">The checkpoint.</param>
public sealed record StoredCheckpoint(long FenceToken, int Attempt, ReadOnlyMemory<byte> Data);
