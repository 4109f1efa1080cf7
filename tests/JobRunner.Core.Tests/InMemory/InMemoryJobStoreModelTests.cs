using System.Runtime.CompilerServices;
using JobRunner.Events;
using JobRunner.InMemory;
using JobRunner.Testing;
using Microsoft.Extensions.Options;

namespace JobRunner.Tests.InMemory;

/// <summary>
/// Random operation sequences against the in-memory store and against a plain model that keeps one immutable
/// <see cref="JobRecord"/> per job and changes it by copy at every step. The store keeps the hot fields inline and
/// builds snapshots only when read, so reads are made at random moments: some jobs are read after every change, others
/// only at the end. Every answer, every read and every state-change event must be the model's; with a small retention,
/// finished jobs are evicted in the same order.
/// </summary>
public sealed class InMemoryJobStoreModelTests
{
    private static readonly TimeSpan Lease = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData(1, 10_000)]
    [InlineData(2, 10_000)]
    [InlineData(3, 10_000)]
    [InlineData(4, 10_000)]
    [InlineData(5, 5)]
    [InlineData(6, 5)]
    [InlineData(7, 1)]
    [InlineData(8, 20)]
    public async Task Random_operations_answer_read_and_publish_as_the_model(int seed, int retention)
    {
        var random = new Random(seed);
        var time = new FakeTimeProvider();
        var events = new JobEventBus();
        using var subscription = events.Subscribe(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } });
        var store = new InMemoryJobStore(time, events, Options.Create(new InMemoryStoreOptions { MaxFinishedJobs = retention }));
        var model = new Model(time, retention);
        var ids = new List<JobId>();
        var leases = new List<JobLease>();

        for (var step = 0; step < 3_000; step++)
        {
            var roll = random.Next(100);
            if (ids.Count < 3 || roll < 8)
            {
                var job = NewJob(time, random);
                await store.InsertAsync(job, default);
                model.Insert(job);
                ids.Add(job.Id);
                continue;
            }

            var id = ids[random.Next(ids.Count)];
            var lease = leases.Count > 0 && random.Next(3) == 0 ? leases[random.Next(leases.Count)] : null;
            var current = leases.LastOrDefault(l => l.JobId == id);
            var chosen = lease ?? current ?? new JobLease(id, "nobody", 999_999, 1, time.GetUtcNow());
            switch (roll)
            {
                case < 30:
                    var worker = "w" + random.Next(3);
                    var leased = await store.TryAcquireLeaseAsync(id, worker, Lease, default);
                    var expected = model.Lease(id, worker, Lease);
                    Assert.Equal(expected is null, leased is null);
                    if (leased is not null)
                    {
                        Assert.Equal(expected!.Lease, leased.Lease);
                        Assert.Equal((expected.FailedAttempts, expected.CancelRequested, expected.CancelReason), (leased.FailedAttempts, leased.CancelRequested, leased.CancelReason));
                        Assert.Equal(expected.Checkpoint?.ToArray(), leased.Checkpoint?.ToArray());
                        Assert.Same(expected.Request, leased.Request);
                        leases.Add(leased.Lease);
                    }

                    break;
                case < 55:
                    var completion = RandomCompletion(time, random);
                    await SameOutcomeAsync(() => store.CompleteAttemptAsync(chosen, completion, default).AsTask(), () => model.Complete(chosen, completion));
                    break;
                case < 62:
                    var checkpoint = new[] { (byte)random.Next(256) };
                    await SameOutcomeAsync(async () => { await store.SaveCheckpointAsync(chosen, checkpoint, default); return 0; }, () => { model.Checkpoint(chosen, checkpoint); return 0; });
                    break;
                case < 69:
                    var progress = new JobProgress(random.Next(11) / 10.0, "p" + step);
                    await SameOutcomeAsync(async () => { await store.ReportProgressAsync(chosen, progress, default); return 0; }, () => { model.Progress(chosen, progress); return 0; });
                    break;
                case < 74:
                    var reason = "r" + step;
                    await SameOutcomeAsync(async () => Snapshot(await store.RequestCancellationAsync(id, reason, default)), () => Snapshot(model.Cancel(id, reason)));
                    break;
                case < 82:
                    time.Advance(TimeSpan.FromSeconds(random.Next(1, 25)));
                    var reclaimed = await store.ReclaimExpiredLeasesAsync(default);
                    var expectedReclaimed = model.Reclaim();
                    Assert.Equal(expectedReclaimed.Select(Snapshot), reclaimed.Select(Snapshot));

                    break;
                default:
                    // Reads land on a few jobs often (their snapshots are built while attempts run) and on others never.
                    var read = ids[random.Next(Math.Min(ids.Count, 4))];
                    Assert.Equal(Snapshot(model.Get(read)), Snapshot(await store.GetAsync(read, default)));
                    break;
            }

            var published = new List<JobEvent>();
            while (subscription.Reader.TryRead(out var e))
            {
                published.Add(e);
            }

            Assert.Equal(model.TakeEvents(), published);
        }

        // The list first, so that it meets entries nobody read; then every job.
        var listed = await store.ListAsync(new JobQuery { PageSize = 1_000 }, default);
        var kept = ids.Where(id => model.Get(id) is not null).ToList();
        Assert.Equal(kept.Select(id => Snapshot(model.Get(id))), listed.Items.Select(Snapshot));
        var paged = new List<JobId>();
        string? token = null;
        do
        {
            var page = await store.ListAsync(new JobQuery { PageSize = 7, ContinuationToken = token }, default);
            paged.AddRange(page.Items.Select(j => j.Id));
            token = page.ContinuationToken;
        }
        while (token is not null);

        Assert.Equal(kept, paged);
        JobQuery[] filters =
        [
            new() { Tenant = "t1", PageSize = 1_000 },
            new() { Workload = "other", State = JobState.Succeeded, PageSize = 1_000 },
            new() { Labels = new Dictionary<string, string> { ["a"] = "1" }, PageSize = 1_000 },
            new() { Tenant = "t0", Labels = new Dictionary<string, string> { ["b1"] = "ü" }, PageSize = 1_000 },
        ];
        foreach (var filter in filters)
        {
            var page = await store.ListAsync(filter, default);
            Assert.Equal(kept.Where(id => filter.Matches(model.Get(id)!)), page.Items.Select(j => j.Id));
        }

        foreach (var id in ids)
        {
            Assert.Equal(Snapshot(model.Get(id)), Snapshot(await store.GetAsync(id, default)));
        }

        Assert.Contains(kept, id => model.Get(id)!.Attempts.Count > 2);
    }

    private static JobRecord NewJob(TimeProvider time, Random random)
    {
        var now = time.GetUtcNow();
        var scheduled = random.Next(4) == 0;
        return new JobRecord
        {
            Id = JobId.New(time),
            Request = RandomRequest(random),
            State = scheduled ? JobState.Scheduled : JobState.Queued,
            DueAt = scheduled ? now.AddSeconds(random.Next(1, 20)) : null,
            CreatedAt = now,
            UpdatedAt = now,
        };
    }

    // Every field a request can carry (a finished job's request is packed into bytes and read back from them), each set
    // at random; a retry policy keeps the request unpacked.
    private static JobRequest RandomRequest(Random random)
    {
        var request = new JobRequest(random.Next(2) == 0 ? "work" : "other") { Tenant = "t" + random.Next(2), Priority = random.Next(1, 11) };
        if (random.Next(2) == 0)
        {
            var input = new byte[random.Next(1, 40)];
            random.NextBytes(input);
            request = request with { Input = input };
        }

        if (random.Next(3) == 0)
        {
            request = request with
            {
                ConcurrencyKey = "ck" + random.Next(3),
                Affinity = "zone=é" + random.Next(3),
                CorrelationId = Guid.NewGuid().ToString(),
                NotBefore = new DateTimeOffset(2026, 1, 2, 3, 4, 5, TimeSpan.FromHours(random.Next(-12, 13))),
                Timeout = TimeSpan.FromTicks(random.NextInt64(1, long.MaxValue)),
                ParentId = new JobId(Guid.NewGuid()),
                Labels = new Dictionary<string, string> { ["a"] = "1", ["b" + random.Next(3)] = "ü" },
            };
        }

        if (random.Next(5) == 0)
        {
            request = request with { Retry = RetryPolicy.Fixed(TimeSpan.FromSeconds(1), 2) };
        }

        return request;
    }

    private static AttemptCompletion RandomCompletion(TimeProvider time, Random random)
    {
        var outcome = (AttemptOutcome)random.Next(6);
        var next = random.Next(5) switch
        {
            0 => JobState.Succeeded,
            1 => JobState.Failed,
            2 => JobState.Cancelled,
            3 => JobState.Scheduled,
            _ => JobState.Queued,
        };
        return new AttemptCompletion
        {
            Outcome = outcome,
            NextState = next,
            DueAt = next == JobState.Scheduled && random.Next(3) > 0 ? time.GetUtcNow().AddSeconds(random.Next(1, 10)) : null,
            Error = random.Next(2) == 0 ? null : "e" + random.Next(100),
            ErrorType = random.Next(2) == 0 ? null : "T",
            ExitCode = random.Next(3) == 0 ? random.Next(5) : null,
        };
    }

    private static async Task SameOutcomeAsync<T>(Func<Task<T>> store, Func<T> model)
    {
        Exception? expected = null;
        var expectedValue = default(T);
        try
        {
            expectedValue = model();
        }
        catch (JobRunnerException e)
        {
            expected = e;
        }

        if (expected is null)
        {
            Assert.Equal(expectedValue, await store());
        }
        else
        {
            var actual = await Assert.ThrowsAnyAsync<JobRunnerException>(store);
            Assert.Equal(expected.GetType(), actual.GetType());
        }
    }

    /// <summary>A job's fields as comparable values (records compare their lists and memory by reference).</summary>
    private static string? Snapshot(JobRecord? job) => job is null ? null : string.Join(
        " | ",
        job.Id,
        job.State,
        job.CreatedAt.UtcTicks,
        job.UpdatedAt.UtcTicks,
        job.DueAt?.UtcTicks,
        job.FenceToken,
        job.CancelRequested,
        job.CancelReason,
        job.LastError,
        job.Progress,
        Render(job.Request),
        job.Checkpoint is { } c ? Convert.ToHexString(c.Span) : "-",
        string.Join(", ", job.Attempts.Select(a => (a.Number, a.WorkerId, a.FenceToken, a.StartedAt.UtcTicks, a.EndedAt?.UtcTicks, a.Outcome, a.Error, a.ErrorType, a.ExitCode))));

    private static string Render(JobRequest r) => string.Join(
        " / ",
        r.Workload,
        r.Tenant,
        r.Priority,
        Convert.ToHexString(r.Input.Span),
        r.DedupeKey,
        r.ConcurrencyKey,
        r.NotBefore?.ToString("O", System.Globalization.CultureInfo.InvariantCulture),
        r.Timeout?.Ticks,
        r.Retry?.MaxAttempts,
        string.Join(",", r.Labels.OrderBy(l => l.Key, StringComparer.Ordinal).Select(l => l.Key + "=" + l.Value)),
        r.Affinity,
        r.CorrelationId,
        r.ParentId);

    /// <summary>The store's rules on immutable records, one copy per change (how the store worked before it kept fields inline).</summary>
    private sealed class Model(TimeProvider time, int retention)
    {
        private readonly Dictionary<JobId, JobRecord> _jobs = [];
        private readonly Dictionary<JobId, DateTimeOffset> _leaseExpiry = [];
        private readonly Queue<JobId> _finished = new();
        private readonly List<JobId> _order = [];
        private readonly List<JobEvent> _events = [];
        private long _fence;

        public void Insert(JobRecord job)
        {
            _jobs.Add(job.Id, job);
            _order.Add(job.Id);
            _events.Add(JobEvent.StateChanged(job));
        }

        public JobRecord? Get(JobId id) => _jobs.GetValueOrDefault(id);

        public List<JobEvent> TakeEvents()
        {
            var taken = _events.ToList();
            _events.Clear();
            return taken;
        }

        public LeasedJob? Lease(JobId id, string worker, TimeSpan duration)
        {
            var now = time.GetUtcNow();
            if (!_jobs.TryGetValue(id, out var job) || !(job.State == JobState.Queued || (job.State == JobState.Scheduled && job.DueAt <= now)))
            {
                return null;
            }

            var fence = ++_fence;
            var attempt = new JobAttempt { Number = job.Attempts.Count + 1, WorkerId = worker, FenceToken = fence, StartedAt = now };
            var running = job with { State = JobState.Running, UpdatedAt = now, DueAt = null, FenceToken = fence, Attempts = [.. job.Attempts, attempt] };
            Change(running, job.State, null);
            _leaseExpiry[id] = now + duration;
            return LeasedJob.For(new JobLease(id, worker, fence, attempt.Number, now + duration), running);
        }

        public JobState Complete(JobLease lease, AttemptCompletion completion)
        {
            var now = time.GetUtcNow();
            var job = Fenced(lease);
            var next = job.CancelRequested && !completion.NextState.IsTerminal() ? JobState.Cancelled : completion.NextState;
            Change(
                job with
                {
                    Attempts = End(job.Attempts, now, completion.Outcome, completion.Error, completion.ErrorType, completion.ExitCode),
                    UpdatedAt = now,
                    State = next,
                    DueAt = next == JobState.Scheduled ? completion.DueAt ?? now : null,
                    LastError = completion.Error ?? job.LastError,
                },
                JobState.Running,
                completion.Error);
            return next;
        }

        public void Checkpoint(JobLease lease, byte[] checkpoint) => _jobs[lease.JobId] = Fenced(lease) with { Checkpoint = checkpoint, UpdatedAt = time.GetUtcNow() };

        public void Progress(JobLease lease, JobProgress progress) => _jobs[lease.JobId] = Fenced(lease) with { Progress = progress, UpdatedAt = time.GetUtcNow() };

        public JobRecord Cancel(JobId id, string reason)
        {
            var now = time.GetUtcNow();
            var job = _jobs.TryGetValue(id, out var found) ? found : throw new JobNotFoundException(id);
            switch (job.State)
            {
                case JobState.Queued or JobState.Scheduled:
                    var cancelled = job with { State = JobState.Cancelled, UpdatedAt = now, DueAt = null, CancelRequested = true, CancelReason = reason };
                    Change(cancelled, job.State, reason);
                    return cancelled;
                case JobState.Running when !job.CancelRequested:
                    return _jobs[id] = job with { CancelRequested = true, CancelReason = reason, UpdatedAt = now };
                default:
                    return job;
            }
        }

        public List<JobRecord> Reclaim()
        {
            var now = time.GetUtcNow();
            var ready = new List<JobRecord>();
            foreach (var id in _order)
            {
                if (!_jobs.TryGetValue(id, out var job) || job.State != JobState.Running || _leaseExpiry[id] > now)
                {
                    continue;
                }

                const string Error = "The lease expired without a heartbeat: the worker stopped or crashed. The job was taken back.";
                var next = job.CancelRequested ? JobState.Cancelled : JobState.Queued;
                var updated = job with { Attempts = End(job.Attempts, now, AttemptOutcome.LeaseExpired, Error, null, null), UpdatedAt = now, State = next };
                Change(updated, JobState.Running, Error);
                if (next == JobState.Queued)
                {
                    ready.Add(updated);
                }
            }

            return ready;
        }

        private static JobAttempt[] End(IReadOnlyList<JobAttempt> attempts, DateTimeOffset now, AttemptOutcome outcome, string? error, string? errorType, int? exitCode)
        {
            var ended = attempts.ToArray();
            ended[^1] = ended[^1] with { EndedAt = now, Outcome = outcome, Error = error, ErrorType = errorType, ExitCode = exitCode };
            return ended;
        }

        /// <summary>Stores a transition, publishes its event, and evicts the oldest finished jobs past the retention.</summary>
        private void Change(JobRecord job, JobState previous, string? message)
        {
            _jobs[job.Id] = job;
            _events.Add(JobEvent.StateChanged(job, previous, message));
            if (job.State.IsTerminal())
            {
                _finished.Enqueue(job.Id);
                while (_finished.Count > retention)
                {
                    _jobs.Remove(_finished.Dequeue());
                }
            }
        }

        private JobRecord Fenced(JobLease lease)
        {
            var job = _jobs.TryGetValue(lease.JobId, out var found) ? found : throw new JobNotFoundException(lease.JobId);
            if (job.FenceToken != lease.FenceToken || job.State != JobState.Running)
            {
                throw new StaleFenceTokenException(lease.JobId, lease.FenceToken, job.FenceToken, "stale");
            }

            return job;
        }
    }
}
