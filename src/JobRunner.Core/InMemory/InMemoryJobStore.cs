using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Options;

namespace JobRunner.InMemory;

/// <summary>
/// The embedded store: one lock over a dictionary of job entries. Fence tokens come from one counter, so every grant is
/// higher than any before it. State changes are published to the event bus under the lock, so the events of a job are in
/// order.
/// </summary>
/// <remarks>
/// An entry keeps the job's last <see cref="JobRecord"/> snapshot and, inline, what the hot path changed since: state,
/// fence, times, and the newest attempt. Leasing and completing change those fields only, and state-change events are
/// built from them; a snapshot is built when someone reads the job (<see cref="GetAsync"/>, a list page, a rare write
/// such as a checkpoint), so a job that nobody reads costs no snapshot per transition. Once a plain job that nobody read
/// while it ran has finished, its request is packed as bytes (<see cref="PackedRequests"/>): the finished jobs kept for
/// lookups are no objects, and give the garbage collector nothing to copy.
/// </remarks>
[DebuggerDisplay("Jobs = {_jobs.Count}, Running = {_running.Count}")]
internal sealed class InMemoryJobStore : IJobStore
{
    private const string RetriedMessage = "Retried by request.";
    private readonly Lock _lock = new();
    private readonly Dictionary<JobId, Entry> _jobs = [];

    // The jobs in insertion order, for list pages.
    private readonly SequenceIndex _order = new();
    private readonly Dictionary<(string Tenant, string Key), JobId> _dedupe = [];
    private readonly HashSet<JobId> _running = [];
    private readonly Queue<JobId> _finished = new();
    private readonly PackedRequests _packed = new();
    // Places in _finished of jobs retried by request since they finished (a job may have several), and their total.
    private readonly Dictionary<JobId, int> _staleFinished = [];
    private int _staleFinishedCount;
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

    /// <summary>Gets how many chunks hold the packed requests of finished jobs (for tests).</summary>
    internal int PackedChunks
    {
        get
        {
            lock (_lock)
            {
                return _packed.ChunksInUse;
            }
        }
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
            var key = job.Request.DedupeKey;
            if (key is not null && _dedupe.TryGetValue((job.Request.Tenant, key), out var existing))
            {
                return new(new SubmitResult(CollectionsMarshal.GetValueRefOrNullRef(_jobs, existing).Snapshot(existing), Attached: true));
            }

            if (!_jobs.TryAdd(job.Id, new Entry(job, ++_sequence)))
            {
                throw new ArgumentException($"Job {job.Id} already exists.", nameof(job));
            }

            _order.Add(_sequence, job.Id);

            if (key is not null)
            {
                _dedupe.Add((job.Request.Tenant, key), job.Id);
            }

            if (_events.IsWatched(JobEventKind.StateChanged))
            {
                _events.Publish(JobEvent.StateChanged(job, previousState: null, message: null));
            }

            return new(new SubmitResult(job, Attached: false));
        }
    }

    public ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            ref var entry = ref CollectionsMarshal.GetValueRefOrNullRef(_jobs, id);
            return new(Unsafe.IsNullRef(ref entry) ? null : entry.Snapshot(id));
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

        // Read in insertion order from the continuation point, up to the first match after the page (which says that
        // there is a next page): a page costs the jobs it passes over, not a sort of all jobs. Filtered on the entries'
        // current state and request, so that only the page's jobs get snapshots.
        var items = new List<JobRecord>();
        string? next = null;
        lock (_lock)
        {
            long last = 0;
            for (var at = _order.FirstAfter(after); at < _order.End; at++)
            {
                if (!_order.TryGet(at, out var sequence, out var id))
                {
                    continue;
                }

                ref var entry = ref CollectionsMarshal.GetValueRefOrNullRef(_jobs, id);
                Debug.Assert(!Unsafe.IsNullRef(ref entry) && entry.Sequence == sequence, "The index holds the jobs of the dictionary.");
                if (!entry.Matches(query))
                {
                    continue;
                }

                if (items.Count == query.PageSize)
                {
                    next = last.ToString(CultureInfo.InvariantCulture);
                    break;
                }

                items.Add(entry.Snapshot(id));
                last = sequence;
            }
        }

        return new(new JobPage(items, next));
    }

    public ValueTask<LeasedJob?> TryAcquireLeaseAsync(JobId id, string workerId, TimeSpan duration, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(workerId);
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            ref var entry = ref CollectionsMarshal.GetValueRefOrNullRef(_jobs, id);
            if (Unsafe.IsNullRef(ref entry))
            {
                return new((LeasedJob?)null);
            }

            var ready = entry.State == JobState.Queued || (entry.State == JobState.Scheduled && entry.DueAt <= now);
            if (!ready)
            {
                return new((LeasedJob?)null);
            }

            var previous = entry.State;
            var fence = ++_fence;
            entry.Start(workerId, fence, now);
            entry.LeaseExpiresAt = now + duration;
            _running.Add(id);
            PublishState(ref entry, previous, message: null);
            var job = entry.Record;
            return new(new LeasedJob(new JobLease(id, workerId, fence, entry.AttemptCount, entry.LeaseExpiresAt), job.Request)
            {
                Checkpoint = job.Checkpoint,
                CancelRequested = job.CancelRequested,
                CancelReason = job.CancelReason,
                FailedAttempts = entry.FailedAttempts,
            });
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
            entry.Replace(entry.Snapshot(lease.JobId) with { Checkpoint = copy, UpdatedAt = now });
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
            entry.Replace(entry.Snapshot(lease.JobId) with { Progress = progress, UpdatedAt = now });
            Publish(entry.Record, JobEventKind.Progress, now, lease.Attempt, progress, progress.Message);
        }

        return ValueTask.CompletedTask;
    }

    public ValueTask<JobState> CompleteAttemptAsync(JobLease lease, AttemptCompletion completion, CancellationToken cancellationToken)
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
            var next = completion.NextState;
            if (entry.Record.CancelRequested && !next.IsTerminal())
            {
                // A cancellation requested during the attempt wins over a retry or a release.
                next = JobState.Cancelled;
            }

            entry.End(now, completion.Outcome, completion.Error, completion.ErrorType, completion.ExitCode);
            entry.State = next;
            entry.DueAt = next == JobState.Scheduled ? completion.DueAt ?? now : null;
            entry.LastError = completion.Error ?? entry.LastError;
            Transition(ref entry, JobState.Running, completion.Error);
            return new(next);
        }
    }

    public ValueTask<JobRecord> RequestCancellationAsync(JobId id, string? reason, CancellationToken cancellationToken)
    {
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            ref var entry = ref Existing(id);
            var job = entry.Snapshot(id);
            switch (job.State)
            {
                case JobState.Queued or JobState.Scheduled:
                    var cancelled = job with { State = JobState.Cancelled, UpdatedAt = now, DueAt = null, CancelRequested = true, CancelReason = reason };
                    entry.Replace(cancelled);
                    Transition(ref entry, job.State, reason);

                    // Also told as a cancellation (after the state change, with state Cancelled), so that a worker that
                    // holds a delivery of the job (waiting in its scheduler, or delayed in the in-memory queue) drops it
                    // now rather than when its turn comes; the workers watch this kind, not every state change.
                    if (_events.IsWatched(JobEventKind.CancellationRequested))
                    {
                        _events.Publish(CancelledBeforeRun.Event(cancelled, job.State, reason));
                    }

                    return new(cancelled);
                case JobState.Running when !job.CancelRequested:
                    entry.Replace(job with { CancelRequested = true, CancelReason = reason, UpdatedAt = now });
                    Publish(entry.Record, JobEventKind.CancellationRequested, now, job.Attempts.Count, progress: null, reason);
                    return new(entry.Record);
                default:
                    return new(job);
            }
        }
    }

    public ValueTask<JobRecord> RequeueAsync(JobId id, CancellationToken cancellationToken)
    {
        var now = _time.GetUtcNow();
        lock (_lock)
        {
            ref var entry = ref Existing(id);
            var job = entry.Snapshot(id);
            if (job.State is not (JobState.Failed or JobState.Cancelled))
            {
                throw new JobStateException(id, job.State, "only a Failed or Cancelled job can be retried; cancel it first, or submit a new job.");
            }

            if (job.Request.DedupeKey is { } key)
            {
                var dedupe = (job.Request.Tenant, key);
                if (!_dedupe.TryAdd(dedupe, id) && _dedupe[dedupe] != id)
                {
                    throw new JobStateException(id, job.State, $"its dedupe key '{key}' is held by live job {_dedupe[dedupe]}; wait for that job, or submit a new job.");
                }
            }

            // Ready now, or at its not-before time if that is still ahead (a cancelled job that never started).
            var notBefore = job.Request.NotBefore > now ? job.Request.NotBefore : null;
            var queued = job with
            {
                State = notBefore is null ? JobState.Queued : JobState.Scheduled,
                UpdatedAt = now,
                DueAt = notBefore,
                CancelRequested = false,
                CancelReason = null,
            };
            entry.Replace(queued);

            // Its place in the finished jobs' eviction order is now stale: eviction skips it.
            CollectionsMarshal.GetValueRefOrAddDefault(_staleFinished, id, out _)++;
            _staleFinishedCount++;
            Transition(ref entry, job.State, RetriedMessage);
            return new(queued);
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

            // Oldest job first, so that a sweep's events and evictions do not depend on the set's order.
            expired?.Sort((a, b) => _jobs[a].Sequence.CompareTo(_jobs[b].Sequence));
            foreach (var id in expired ?? [])
            {
                ref var entry = ref CollectionsMarshal.GetValueRefOrNullRef(_jobs, id);
                const string Error = "The lease expired without a heartbeat: the worker stopped or crashed. The job was taken back.";
                var next = entry.Record.CancelRequested ? JobState.Cancelled : JobState.Queued;
                entry.End(now, AttemptOutcome.LeaseExpired, Error, errorType: null, exitCode: null);
                entry.State = next;
                Transition(ref entry, JobState.Running, Error);
                if (next == JobState.Queued)
                {
                    (ready ??= []).Add(entry.Snapshot(id));
                }
            }
        }

        return new(ready is null ? [] : ready);
    }

    /// <summary>Returns the job's entry, or throws <see cref="JobNotFoundException"/>.</summary>
    private ref Entry Existing(JobId id)
    {
        ref var entry = ref CollectionsMarshal.GetValueRefOrNullRef(_jobs, id);
        if (Unsafe.IsNullRef(ref entry))
        {
            throw new JobNotFoundException(id);
        }

        return ref entry;
    }

    /// <summary>Returns the entry when <paramref name="lease"/> is current, or throws <see cref="StaleFenceTokenException"/>.</summary>
    private ref Entry GetFenced(JobLease lease)
    {
        ref var entry = ref FindEntry(lease);
        if (WhyNotFenced(lease, ref entry) is { } reason)
        {
            throw Unsafe.IsNullRef(ref entry)
                ? new JobNotFoundException(lease.JobId)
                : new StaleFenceTokenException(lease.JobId, lease.FenceToken, entry.Fence, reason);
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

        if (entry.Fence != lease.FenceToken)
        {
            return "a newer lease was granted";
        }

        return entry.State == JobState.Running ? null : $"the attempt already ended (the job is {entry.State})";
    }

    /// <summary>Finishes a change of <paramref name="entry"/>'s state: running and finished sets, dedupe key, event.</summary>
    private void Transition(ref Entry entry, JobState previous, string? message)
    {
        var id = entry.Record.Id;
        if (previous == JobState.Running)
        {
            _running.Remove(id);
        }

        PublishState(ref entry, previous, message);
        if (entry.State.IsTerminal())
        {
            var request = entry.Record.Request;
            if (request.DedupeKey is { } key && _dedupe.TryGetValue((request.Tenant, key), out var holder) && holder == id)
            {
                _dedupe.Remove((request.Tenant, key));
            }

            entry.Compact(_packed);

            // Last, because evicting may reach this very entry, and then the ref is no longer valid.
            _finished.Enqueue(id);
            while (_finished.Count - _staleFinishedCount > _maxFinished)
            {
                var oldest = _finished.Dequeue();
                if (_staleFinishedCount > 0 && _staleFinished.Remove(oldest, out var stale))
                {
                    // The place a retried job had when it first finished (its newer place, if any, comes later).
                    if (stale > 1)
                    {
                        _staleFinished[oldest] = stale - 1;
                    }

                    _staleFinishedCount--;
                    continue;
                }

                if (_jobs.Remove(oldest, out var evicted))
                {
                    evicted.Release();
                    _order.Remove(evicted.Sequence);
                }
            }
        }
    }

    private void PublishState(ref Entry entry, JobState? previous, string? message)
    {
        if (_events.IsWatched(JobEventKind.StateChanged))
        {
            // From the entry's current fields: an event needs no snapshot.
            var job = entry.Record;
            _events.Publish(JobEvent.StateChanged(job.Id, job.Request.Tenant, job.Request.Workload, entry.UpdatedAt, entry.State, entry.AttemptCount, previous, message));
        }
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

    /// <summary>
    /// A job's slot, stored inline in the dictionary (no object per job) and changed through refs under the lock.
    /// <see cref="Record"/> is the last snapshot; <see cref="State"/>, <see cref="Fence"/>, <see cref="UpdatedAt"/>,
    /// <see cref="DueAt"/>, <see cref="LastError"/> and the newest attempt (while not yet in the snapshot's list) are
    /// always current, and <see cref="Snapshot"/> folds them in when someone reads the job. Times are kept as UTC ticks
    /// and absent values as sentinels to keep the slot at about 120 bytes (a backlog of a million jobs is a million
    /// slots): more than a reference to a record, and no object per attempt. A finished job that nobody read while it ran
    /// keeps no record (<see cref="Compact"/>).
    /// </summary>
    private struct Entry
    {
        private const long None = long.MinValue;

        public readonly long Sequence;

        // The job's last JobRecord snapshot; or, once a job that the fields below describe completely has finished, its
        // request packed into a PackedChunk, or its JobRequest when it cannot be packed (see Compact).
        private object _job;

        public long Fence;

        public string? LastError;

        /// <summary>The number of attempts so far, the newest included.</summary>
        public int AttemptCount;

        /// <summary>The attempts so far that failed, timed out or lost their lease.</summary>
        public int FailedAttempts;

        private long _updatedAt;
        private long _dueAt;

        // While the job runs, when its lease expires; once it is compacted, where its request is packed in _job or, if
        // _job is the JobRequest, when the job was created.
        private long _leaseExpiresAt;

        // The newest attempt while it is not in Record's list (its worker is set then); its number is AttemptCount and
        // its fence is Fence.
        private string? _worker;
        private string? _error;
        private string? _errorType;
        private long _startedAt;
        private long _endedAt;
        private int _exitCode;
        private bool _hasExitCode;
        private sbyte _outcome;
        private JobState _state;

        /// <summary>Whether a field above is newer than <see cref="Record"/>.</summary>
        private bool _changed;

        public Entry(JobRecord record, long sequence)
        {
            Sequence = sequence;
            _job = record;
            Replace(record);
            AttemptCount = record.Attempts.Count;
            FailedAttempts = CountFailed(record.Attempts);
        }

        /// <summary>Gets the last snapshot of a job that is not finished (a finished job may be compacted: use <see cref="Snapshot"/>).</summary>
        public readonly JobRecord Record
        {
            get
            {
                Debug.Assert(_job is JobRecord, "Only a finished job is compacted.");
                return Unsafe.As<JobRecord>(_job);
            }
        }

        /// <summary>Whether the job matches <paramref name="query"/>'s filter.</summary>
        public readonly bool Matches(JobQuery query) => _job switch
        {
            PackedChunk chunk => chunk.Owner.Matches(query, _state, chunk, (int)_leaseExpiresAt),
            JobRequest request => query.Matches(_state, request),
            _ => query.Matches(_state, Unsafe.As<JobRecord>(_job).Request),
        };

        /// <summary>Gives back the packed request's place; the entry is being removed.</summary>
        public readonly void Release()
        {
            if (_job is PackedChunk chunk)
            {
                chunk.Owner.Release(chunk);
            }
        }

        public JobState State
        {
            readonly get => _state;
            set
            {
                _state = value;
                _changed = true;
            }
        }

        public DateTimeOffset UpdatedAt
        {
            readonly get => new(_updatedAt, TimeSpan.Zero);
            private set => _updatedAt = value.UtcTicks;
        }

        public DateTimeOffset? DueAt
        {
            readonly get => _dueAt == None ? null : new DateTimeOffset(_dueAt, TimeSpan.Zero);
            set
            {
                _dueAt = value?.UtcTicks ?? None;
                _changed = true;
            }
        }

        public DateTimeOffset LeaseExpiresAt
        {
            readonly get => new(_leaseExpiresAt, TimeSpan.Zero);
            set => _leaseExpiresAt = value.UtcTicks;
        }

        /// <summary>Gets the job as it is now, building the snapshot only when something changed since the last.</summary>
        public JobRecord Snapshot(JobId id)
        {
            if (!_changed)
            {
                return Record;
            }

            if (_job is PackedChunk chunk)
            {
                // Built for this reader only: the job stays packed.
                var packed = chunk.Owner.Unpack(chunk, (int)_leaseExpiresAt, out var createdAt);
                return Build(id, packed, createdAt, _worker is null ? [] : [NewestAttempt()]);
            }

            var record = _job as JobRecord;
            var attempts = record?.Attempts ?? [];
            if (_worker is not null)
            {
                var all = new JobAttempt[attempts.Count + 1];
                for (var i = 0; i < attempts.Count; i++)
                {
                    all[i] = attempts[i];
                }

                all[^1] = NewestAttempt();
                attempts = all;
                _worker = _error = _errorType = null;
            }

            _job = record is null
                ? Build(id, Unsafe.As<JobRequest>(_job), _leaseExpiresAt, attempts)
                : record with { State = State, FenceToken = Fence, UpdatedAt = UpdatedAt, DueAt = DueAt, LastError = LastError, Attempts = attempts };
            _changed = false;
            return Record;
        }

        /// <summary>
        /// Keeps only the request of a finished job whose snapshot holds nothing that the fields of this slot do not
        /// (no checkpoint, progress, cancellation, or earlier attempt), packed into <paramref name="packed"/> when it can
        /// be, so that a finished job kept for lookups is no object of its own: the collector does not copy kept jobs from
        /// one generation to the next, and its pauses stay as short as with nothing kept. <see cref="Snapshot"/> builds the
        /// record for each reader.
        /// </summary>
        public void Compact(PackedRequests packed)
        {
            Debug.Assert(_state.IsTerminal(), "Only a finished job is compacted: a lease expiry is kept in the same field.");
            if (_job is JobRecord { Attempts.Count: 0, Checkpoint: null, Progress: null, CancelRequested: false, CancelReason: null } record)
            {
                if (packed.TryPack(record.Request, record.CreatedAt.UtcTicks, out var chunk, out var offset))
                {
                    _job = chunk;
                    _leaseExpiresAt = offset;
                }
                else
                {
                    _job = record.Request;
                    _leaseExpiresAt = record.CreatedAt.UtcTicks;
                }

                _changed = true;
            }
        }

        private readonly JobRecord Build(JobId id, JobRequest request, long createdAt, IReadOnlyList<JobAttempt> attempts) => new()
        {
            Id = id,
            Request = request,
            CreatedAt = new DateTimeOffset(createdAt, TimeSpan.Zero),
            State = State,
            FenceToken = Fence,
            UpdatedAt = UpdatedAt,
            DueAt = DueAt,
            LastError = LastError,
            Attempts = attempts,
        };

        // Only while the newest attempt is inline (its worker is set).
        private readonly JobAttempt NewestAttempt() => new()
        {
            Number = AttemptCount,
            WorkerId = _worker!,
            FenceToken = Fence,
            StartedAt = new DateTimeOffset(_startedAt, TimeSpan.Zero),
            EndedAt = _endedAt == None ? null : new DateTimeOffset(_endedAt, TimeSpan.Zero),
            Outcome = _outcome < 0 ? null : (AttemptOutcome)_outcome,
            Error = _error,
            ErrorType = _errorType,
            ExitCode = _hasExitCode ? _exitCode : null,
        };

        /// <summary>Replaces the job with <paramref name="job"/>, a change of the current <see cref="Snapshot"/>.</summary>
        public void Replace(JobRecord job)
        {
            Debug.Assert(_worker is null || _job is PackedChunk, "Replace takes a change of the current snapshot.");
            Release();
            _worker = _error = _errorType = null;
            _job = job;
            _state = job.State;
            Fence = job.FenceToken;
            UpdatedAt = job.UpdatedAt;
            _dueAt = job.DueAt?.UtcTicks ?? None;
            LastError = job.LastError;
            _changed = false;
        }

        /// <summary>Starts a new attempt under the lease with <paramref name="fence"/>: the job is Running.</summary>
        public void Start(string workerId, long fence, DateTimeOffset now)
        {
            if (_worker is not null)
            {
                // The previous attempt ended but is not in the list yet (a retry): put it there first.
                Snapshot(Record.Id);
            }

            AttemptCount++;
            _worker = workerId;
            _startedAt = now.UtcTicks;
            _endedAt = None;
            _outcome = -1;
            _hasExitCode = false;
            State = JobState.Running;
            Fence = fence;
            UpdatedAt = now;
            DueAt = null;
        }

        /// <summary>Ends the newest attempt; the caller sets the job's next state.</summary>
        public void End(DateTimeOffset now, AttemptOutcome outcome, string? error, string? errorType, int? exitCode)
        {
            if (_worker is not null)
            {
                _endedAt = now.UtcTicks;
                _outcome = (sbyte)outcome;
                _error = error;
                _errorType = errorType;
                _exitCode = exitCode.GetValueOrDefault();
                _hasExitCode = exitCode.HasValue;
            }
            else
            {
                // Someone read the job while the attempt ran, so the attempt is in the list already: end it there.
                var ended = Record.Attempts.ToArray();
                ended[^1] = ended[^1] with { EndedAt = now, Outcome = outcome, Error = error, ErrorType = errorType, ExitCode = exitCode };
                _job = Record with { Attempts = ended };
            }

            if (outcome.IsFailure())
            {
                FailedAttempts++;
            }

            UpdatedAt = now;
            _changed = true;
        }

        private static int CountFailed(IReadOnlyList<JobAttempt> attempts)
        {
            var failed = 0;
            foreach (var attempt in attempts)
            {
                if (attempt.Outcome?.IsFailure() == true)
                {
                    failed++;
                }
            }

            return failed;
        }
    }
}
