using System.Collections.Concurrent;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// The records this store handed out with the leases it granted, by job id. A completion builds the job after the change
/// from its lease's record and the few columns the statement changed, instead of reading the whole row back (input,
/// attempts, labels, retry). Only a record with the completing lease's fence token is used; a completion that finds none
/// reads the row. Bounded: past <see cref="Capacity"/> records (leases that were never completed here, e.g. lost) it
/// starts afresh, which only costs those completions a read.
/// </summary>
internal sealed class LeasedRecords
{
    /// <summary>The most records kept.</summary>
    public const int Capacity = 16_384;

    private readonly ConcurrentDictionary<Guid, JobRecord> _records = new();
    private int _adds;

    public int Count => _records.Count;

    public void Add(JobRecord job)
    {
        if ((Interlocked.Increment(ref _adds) & 1023) == 0 && _records.Count >= Capacity)
        {
            _records.Clear();
        }

        _records[job.Id.Value] = job;
    }

    /// <summary>Removes and returns the record handed out with <paramref name="lease"/>, or <see langword="null"/>.</summary>
    public JobRecord? Take(JobLease lease)
    {
        var id = lease.JobId.Value;
        return _records.TryGetValue(id, out var job) && job.FenceToken == lease.FenceToken && _records.TryRemove(KeyValuePair.Create(id, job)) ? job : null;
    }

    /// <summary>Forgets the record of the lease with <paramref name="fence"/> on job <paramref name="id"/> (lost or reclaimed).</summary>
    public void Forget(JobId id, long fence)
    {
        if (_records.TryGetValue(id.Value, out var job) && job.FenceToken == fence)
        {
            _records.TryRemove(KeyValuePair.Create(id.Value, job));
        }
    }
}
