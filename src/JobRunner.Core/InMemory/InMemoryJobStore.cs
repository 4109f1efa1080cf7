using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Options;

namespace JobRunner.InMemory;

/// <summary>
/// The embedded store: one lock over a dictionary of immutable <see cref="JobRecord"/> snapshots. Fence tokens come from
/// one counter, so every grant is higher than any before it. State changes are published to the event bus under the
/// lock, so the events of a job are in order.
/// </summary>
[DebuggerDisplay("Jobs = {_jobs.Count}, Running = {_running.Count}")]
internal sealed class InMemoryJobStore : IJobStore
{
    private readonly Lock _lock = new();
    private readonly Dictionary<JobId, Entry> _jobs = [];
    private readonly Dictionary<(string Tenant, string Key), JobId> _dedupe = [];
    private readonly HashSet<JobId> _running = [];
    private readonly Queue<JobId> _finished = new();
    private readonly TimeProvider _time;
    private readonly IJobEventBus _events;
    private readonly int _maxFinished;
    private long _fence;
    private long _sequence;

    public InMemoryJobStore(TimeProvider time, IJobEventBus events, IOptions<InMemoryStoreOptions> options)
    {
        _time = time;
        _events = events;
        _maxFinished = options.Value.MaxFinishedJobs;
    }

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _jobs.Count;
            }
        }
    }

    public ValueTask<SubmitResult> InsertAsync(JobRecord job, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(job);
        if (job.State is not (JobState.Queued or JobState.Scheduled))
        {
            throw new ArgumentException($"A new job must be Queued or Scheduled, not {job.State}.", nameof(job));
        }

        lock (_lock)
        {
            if (job.Request.DedupeKey is { } key)
            {
                if (_dedupe.TryGetValue((job.Request.Tenant, key), out var existing))
                {
                    return new(new SubmitResult(_jobs[existing].Record, Attached: true));
                }

                _dedupe.Add((job.Request.Tenant, key), job.Id);
            }

            if (!_jobs.TryAdd(job.Id, new Entry(job, ++_sequence)))
            {
                throw new ArgumentException($"Job {job.Id} already exists.", nameof(job));
            }

            PublishState(job, previous: null, message: null);
            return new(new SubmitResult(job, Attached: false));
        }
    }

    public ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return new(_jobs.TryGetValue(id, out var entry) ? entry.Record : null);
        }
    }

    public ValueTask<JobPage> ListAsync(JobQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.PageSize, 1);
        long after = 0;
        if (query.ContinuationToken is { } token && !long.TryParse(token, NumberStyles.None, CultureInfo.InvariantCulture, out after))
        {
            throw new ArgumentException($"The continuation token '{token}' was not issued by this store. Pass the JobPage.ContinuationToken of the previous page.", nameof(query));
        }

        var matches = new List<Entry>();
        lock (_lock)
        {
            foreach (var entry in _jobs.Values)
            {
                if (entry.Sequence > after && query.Matches(entry.Record))
                {
                    matches.Add(entry);
                }
            }
        }

        matches.Sort(static (a, b) => a.Sequence.CompareTo(b.Sequence));
        var take = Math.Min(query.PageSize, matches.Count);
        var items = new JobRecord[take];
        for (var i = 0; i < take; i++)
        {
            items[i] = matches[i].Record;
        }

        var next = matches.Count > take ? matches[take - 1].Sequence.ToString(CultureInfo.InvariantCulture) : null;
        return new(new JobPage(items, next));
    }

    public ValueTask<LeasedJob?> TryAcquireLeaseAsync(JobId id, string workerId, TimeSpan duration, CancellationToken cancellationToken)
    {
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            ref var entry = ref CollectionsMarshal.GetValueRefOrNullRef(_jobs, id);
            if (Unsafe.IsNullRef(ref entry))
            {
                return new((LeasedJob?)null);
            }

            var job = entry.Record;
            var ready = job.State == JobState.Queued || (job.State == JobState.Scheduled && job.DueAt <= now);
            if (!ready)
            {
                return new((LeasedJob?)null);
            }

            var fence = ++_fence;
            var number = job.Attempts.Count + 1;
            var attempt = new JobAttempt { Number = number, WorkerId = workerId, FenceToken = fence, StartedAt = now };
            var running = job with
            {
                State = JobState.Running,
                UpdatedAt = now,
                DueAt = null,
                FenceToken = fence,
                Attempts = Append(job.Attempts, attempt),
            };
            entry.Record = running;
            entry.LeaseExpiresAt = now + duration;
            _running.Add(id);
            PublishState(running, job.State, message: null);
            return new(new LeasedJob(new JobLease(id, workerId, fence, number, entry.LeaseExpiresAt), running));
        }
    }

    public ValueTask<IReadOnlyList<JobId>> RenewLeasesAsync(IReadOnlyList<JobLease> leases, TimeSpan duration, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(leases);
        List<JobId>? lost = null;
        var expiresAt = _time.GetUtcNow() + duration;
        lock (_lock)
        {
            foreach (var lease in leases)
            {
                ref var entry = ref FindEntry(lease);
                if (WhyNotFenced(lease, ref entry) is null)
                {
                    entry.LeaseExpiresAt = expiresAt;
                }
                else
                {
                    (lost ??= []).Add(lease.JobId);
                }
            }
        }

        return new(lost is null ? [] : lost);
    }

    public ValueTask SaveCheckpointAsync(JobLease lease, ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken)
    {
        var copy = checkpoint.ToArray();
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            ref var entry = ref GetFenced(lease);
            entry.Record = entry.Record with { Checkpoint = copy, UpdatedAt = now };
            Publish(entry.Record, JobEventKind.Checkpointed, now, lease.Attempt, progress: null, message: null);
        }

        return ValueTask.CompletedTask;
    }

    public ValueTask ReportProgressAsync(JobLease lease, JobProgress progress, CancellationToken cancellationToken)
    {
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            ref var entry = ref GetFenced(lease);
            entry.Record = entry.Record with { Progress = progress, UpdatedAt = now };
            Publish(entry.Record, JobEventKind.Progress, now, lease.Attempt, progress, progress.Message);
        }

        return ValueTask.CompletedTask;
    }

    public ValueTask<JobRecord> CompleteAttemptAsync(JobLease lease, AttemptCompletion completion, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(completion);
        if (completion.NextState == JobState.Running)
        {
            throw new ArgumentException("An attempt cannot complete into Running. Use Queued to run the job again.", nameof(completion));
        }

        var now = _time.GetUtcNow();
        lock (_lock)
        {
            ref var entry = ref GetFenced(lease);
            var job = entry.Record;
            var next = completion.NextState;
            if (job.CancelRequested && !next.IsTerminal())
            {
                // A cancellation requested during the attempt wins over a retry or a release.
                next = JobState.Cancelled;
            }

            var updated = job with
            {
                Attempts = EndAttempt(job.Attempts, now, completion.Outcome, completion.Error, completion.ErrorType, completion.ExitCode),
                UpdatedAt = now,
                State = next,
                DueAt = next == JobState.Scheduled ? completion.DueAt ?? now : null,
                LastError = completion.Error ?? job.LastError,
            };
            Transition(ref entry, updated, job.State, completion.Error);
            return new(updated);
        }
    }

    public ValueTask<JobRecord> RequestCancellationAsync(JobId id, string? reason, CancellationToken cancellationToken)
    {
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            ref var entry = ref CollectionsMarshal.GetValueRefOrNullRef(_jobs, id);
            if (Unsafe.IsNullRef(ref entry))
            {
                throw new JobNotFoundException(id);
            }

            var job = entry.Record;
            switch (job.State)
            {
                case JobState.Queued or JobState.Scheduled:
                    var cancelled = job with { State = JobState.Cancelled, UpdatedAt = now, DueAt = null, CancelRequested = true, CancelReason = reason };
                    Transition(ref entry, cancelled, job.State, reason);
                    return new(cancelled);
                case JobState.Running when !job.CancelRequested:
                    entry.Record = job with { CancelRequested = true, CancelReason = reason, UpdatedAt = now };
                    Publish(entry.Record, JobEventKind.CancellationRequested, now, job.Attempts.Count, progress: null, reason);
                    return new(entry.Record);
                default:
                    return new(job);
            }
        }
    }

    public ValueTask<IReadOnlyList<JobRecord>> ReclaimExpiredLeasesAsync(CancellationToken cancellationToken)
    {
        var now = _time.GetUtcNow();
        List<JobRecord>? ready = null;
        lock (_lock)
        {
            List<JobId>? expired = null;
            foreach (var id in _running)
            {
                if (_jobs[id].LeaseExpiresAt <= now)
                {
                    (expired ??= []).Add(id);
                }
            }

            foreach (var id in expired ?? [])
            {
                ref var entry = ref CollectionsMarshal.GetValueRefOrNullRef(_jobs, id);
                var job = entry.Record;
                const string Error = "The lease expired without a heartbeat: the worker stopped or crashed. The job was taken back.";
                var next = job.CancelRequested ? JobState.Cancelled : JobState.Queued;
                var updated = job with
                {
                    Attempts = EndAttempt(job.Attempts, now, AttemptOutcome.LeaseExpired, Error, errorType: null, exitCode: null),
                    UpdatedAt = now,
                    State = next,
                };
                Transition(ref entry, updated, job.State, Error);
                if (next == JobState.Queued)
                {
                    (ready ??= []).Add(updated);
                }
            }
        }

        return new(ready is null ? [] : ready);
    }

    private static JobAttempt[] Append(IReadOnlyList<JobAttempt> attempts, JobAttempt attempt)
    {
        var result = new JobAttempt[attempts.Count + 1];
        for (var i = 0; i < attempts.Count; i++)
        {
            result[i] = attempts[i];
        }

        result[^1] = attempt;
        return result;
    }

    private static JobAttempt[] EndAttempt(IReadOnlyList<JobAttempt> attempts, DateTimeOffset now, AttemptOutcome outcome, string? error, string? errorType, int? exitCode)
    {
        var ended = attempts.ToArray();
        ended[^1] = ended[^1] with { EndedAt = now, Outcome = outcome, Error = error, ErrorType = errorType, ExitCode = exitCode };
        return ended;
    }

    /// <summary>Returns the entry when <paramref name="lease"/> is current, or throws <see cref="StaleFenceTokenException"/>.</summary>
    private ref Entry GetFenced(JobLease lease)
    {
        ref var entry = ref FindEntry(lease);
        if (WhyNotFenced(lease, ref entry) is { } reason)
        {
            throw Unsafe.IsNullRef(ref entry)
                ? new JobNotFoundException(lease.JobId)
                : new StaleFenceTokenException(lease.JobId, lease.FenceToken, entry.Record.FenceToken, reason);
        }

        return ref entry;
    }

    private ref Entry FindEntry(JobLease lease)
    {
        ArgumentNullException.ThrowIfNull(lease);
        return ref CollectionsMarshal.GetValueRefOrNullRef(_jobs, lease.JobId);
    }

    /// <summary>Returns <see langword="null"/> when the lease is current, else why it is not.</summary>
    private static string? WhyNotFenced(JobLease lease, ref Entry entry)
    {
        if (Unsafe.IsNullRef(ref entry))
        {
            return "the job no longer exists";
        }

        if (entry.Record.FenceToken != lease.FenceToken)
        {
            return "a newer lease was granted";
        }

        return entry.Record.State == JobState.Running ? null : $"the attempt already ended (the job is {entry.Record.State})";
    }

    private void Transition(ref Entry entry, JobRecord updated, JobState previous, string? message)
    {
        entry.Record = updated;
        if (previous == JobState.Running)
        {
            _running.Remove(updated.Id);
        }

        if (updated.State.IsTerminal())
        {
            if (updated.Request.DedupeKey is { } key)
            {
                _dedupe.Remove((updated.Request.Tenant, key));
            }

            // Evicting other jobs moves no entry (a dictionary only moves them when it grows), so the ref stays valid.
            _finished.Enqueue(updated.Id);
            while (_finished.Count > _maxFinished)
            {
                _jobs.Remove(_finished.Dequeue());
            }
        }

        PublishState(updated, previous, message);
    }

    private void PublishState(JobRecord job, JobState? previous, string? message)
    {
        if (_events.IsWatched(JobEventKind.StateChanged))
        {
            _events.Publish(JobEvent.StateChanged(job, previous, message));
        }
    }

    private void Publish(JobRecord job, JobEventKind kind, DateTimeOffset now, int attempt, JobProgress? progress, string? message)
    {
        if (_events.IsWatched(kind))
        {
            _events.Publish(JobEvent.ForAttempt(kind, job.Id, job.Request.Tenant, job.Request.Workload, now, attempt, message, progress));
        }
    }

    /// <summary>A job's slot, stored inline in the dictionary (no object per job); changed through refs under the lock.</summary>
    private struct Entry(JobRecord record, long sequence)
    {
        public JobRecord Record = record;

        public readonly long Sequence = sequence;

        public DateTimeOffset LeaseExpiresAt;
    }
}
