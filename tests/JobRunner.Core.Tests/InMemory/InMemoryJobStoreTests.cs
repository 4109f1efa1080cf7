using JobRunner.Events;
using JobRunner.InMemory;
using JobRunner.Testing;
using Microsoft.Extensions.Options;

namespace JobRunner.Tests.InMemory;

public sealed class InMemoryJobStoreTests
{
    private static readonly TimeSpan Lease = TimeSpan.FromSeconds(30);
    private readonly FakeTimeProvider _time = new();
    private readonly JobEventBus _events = new();
    private readonly InMemoryJobStore _store;

    public InMemoryJobStoreTests()
    {
        _store = new InMemoryJobStore(_time, _events, Options.Create(new InMemoryStoreOptions { MaxFinishedJobs = 3 }));
    }

    private JobRecord NewJob(JobRequest? request = null) => new()
    {
        Id = JobId.New(_time),
        Request = request ?? new JobRequest("work"),
        State = JobState.Queued,
        CreatedAt = _time.GetUtcNow(),
        UpdatedAt = _time.GetUtcNow(),
    };

    private async Task<LeasedJob> InsertAndLeaseAsync(JobRequest? request = null, string worker = "w1")
    {
        var job = NewJob(request);
        await _store.InsertAsync(job, default);
        return (await _store.TryAcquireLeaseAsync(job.Id, worker, Lease, default))!;
    }

    private static AttemptCompletion Succeeded => new() { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded };

    [Fact]
    public async Task InsertAsync_ThenGet_ReturnsTheJob()
    {
        var job = NewJob();

        var result = await _store.InsertAsync(job, default);

        Assert.False(result.Attached);
        Assert.Equal(job, await _store.GetAsync(job.Id, default));
    }

    [Fact]
    public async Task InsertAsync_LiveDedupeKey_AttachesToExistingJob()
    {
        var first = NewJob(new JobRequest("work") { DedupeKey = "k" });
        await _store.InsertAsync(first, default);

        var second = await _store.InsertAsync(NewJob(new JobRequest("work") { DedupeKey = "k" }), default);

        Assert.True(second.Attached);
        Assert.Equal(first.Id, second.Id);
        Assert.Equal(1, _store.Count);
    }

    [Fact]
    public async Task InsertAsync_DedupeKeyOfFinishedJob_CreatesNewJob()
    {
        var leased = await InsertAndLeaseAsync(new JobRequest("work") { DedupeKey = "k" });
        await _store.CompleteAttemptAsync(leased.Lease, Succeeded, default);

        var again = await _store.InsertAsync(NewJob(new JobRequest("work") { DedupeKey = "k" }), default);

        Assert.False(again.Attached);
        Assert.NotEqual(leased.Lease.JobId, again.Id);
    }

    [Fact]
    public async Task InsertAsync_ExistingIdWithNewDedupeKey_ThrowsAndLeavesTheKeyFree()
    {
        var job = NewJob();
        await _store.InsertAsync(job, default);

        await Assert.ThrowsAsync<ArgumentException>(() => _store.InsertAsync(job with { Request = new JobRequest("work") { DedupeKey = "k" } }, default).AsTask());
        var other = await _store.InsertAsync(NewJob(new JobRequest("work") { DedupeKey = "k" }), default);

        Assert.False(other.Attached);
    }

    [Fact]
    public async Task TryAcquireLeaseAsync_NoWorkerId_ThrowsAndChangesNothing()
    {
        var job = NewJob();
        await _store.InsertAsync(job, default);

        await Assert.ThrowsAsync<ArgumentNullException>(() => _store.TryAcquireLeaseAsync(job.Id, null!, Lease, default).AsTask());
        await Assert.ThrowsAsync<ArgumentException>(() => _store.TryAcquireLeaseAsync(job.Id, "", Lease, default).AsTask());

        Assert.Equal(job, await _store.GetAsync(job.Id, default));
    }

    [Fact]
    public async Task InsertAsync_SameKeyOtherTenant_DoesNotAttach()
    {
        await _store.InsertAsync(NewJob(new JobRequest("work") { DedupeKey = "k", Tenant = "a" }), default);

        var other = await _store.InsertAsync(NewJob(new JobRequest("work") { DedupeKey = "k", Tenant = "b" }), default);

        Assert.False(other.Attached);
    }

    [Fact]
    public async Task TryAcquireLeaseAsync_EachGrant_HasHigherFenceToken()
    {
        var a = await InsertAndLeaseAsync();
        var b = await InsertAndLeaseAsync();
        await _store.CompleteAttemptAsync(a.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Queued }, default);
        var again = (await _store.TryAcquireLeaseAsync(a.Lease.JobId, "w2", Lease, default))!;

        Assert.True(b.Lease.FenceToken > a.Lease.FenceToken);
        Assert.True(again.Lease.FenceToken > b.Lease.FenceToken);
        Assert.Equal(2, again.Lease.Attempt);
        var job = (await _store.GetAsync(a.Lease.JobId, default))!;
        Assert.Equal(JobState.Running, job.State);
        Assert.Equal(again.Lease.FenceToken, job.FenceToken);
        Assert.Equal(["w1", "w2"], job.Attempts.Select(x => x.WorkerId));
    }

    [Fact]
    public async Task TryAcquireLeaseAsync_AlreadyRunning_ReturnsNull()
    {
        var leased = await InsertAndLeaseAsync();

        Assert.Null(await _store.TryAcquireLeaseAsync(leased.Lease.JobId, "w2", Lease, default));
    }

    [Fact]
    public async Task TryAcquireLeaseAsync_ScheduledNotDue_ReturnsNull()
    {
        var job = NewJob() with { State = JobState.Scheduled, DueAt = _time.GetUtcNow().AddMinutes(1) };
        await _store.InsertAsync(job, default);

        Assert.Null(await _store.TryAcquireLeaseAsync(job.Id, "w1", Lease, default));
        _time.Advance(TimeSpan.FromMinutes(1));
        Assert.NotNull(await _store.TryAcquireLeaseAsync(job.Id, "w1", Lease, default));
    }

    [Fact]
    public async Task FencedWrites_StaleToken_AreRejectedAndChangeNothing()
    {
        var first = await InsertAndLeaseAsync();
        await _store.SaveCheckpointAsync(first.Lease, "1"u8.ToArray(), default);
        await _store.CompleteAttemptAsync(first.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Queued }, default);
        var second = (await _store.TryAcquireLeaseAsync(first.Lease.JobId, "w2", Lease, default))!;
        var before = await _store.GetAsync(first.Lease.JobId, default);

        var checkpoint = await Assert.ThrowsAsync<StaleFenceTokenException>(() => _store.SaveCheckpointAsync(first.Lease, "stale"u8.ToArray(), default).AsTask());
        await Assert.ThrowsAsync<StaleFenceTokenException>(() => _store.ReportProgressAsync(first.Lease, new JobProgress(0.5, "stale"), default).AsTask());
        await Assert.ThrowsAsync<StaleFenceTokenException>(() => _store.CompleteAttemptAsync(first.Lease, Succeeded, default).AsTask());

        Assert.Equal(first.Lease.FenceToken, checkpoint.PresentedToken);
        Assert.Equal(second.Lease.FenceToken, checkpoint.CurrentToken);
        Assert.Equal(before, await _store.GetAsync(first.Lease.JobId, default));
        Assert.Equal("1"u8.ToArray(), (await _store.GetAsync(first.Lease.JobId, default))!.Checkpoint!.Value.ToArray());
    }

    [Fact]
    public async Task FencedWrites_AfterCompletion_AreRejected()
    {
        var leased = await InsertAndLeaseAsync();
        await _store.CompleteAttemptAsync(leased.Lease, Succeeded, default);

        var e = await Assert.ThrowsAsync<StaleFenceTokenException>(() => _store.CompleteAttemptAsync(leased.Lease, Succeeded, default).AsTask());

        Assert.Contains("already ended", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RenewLeasesAsync_ReturnsOnlyStaleLeases()
    {
        var live = await InsertAndLeaseAsync();
        var stale = await InsertAndLeaseAsync();
        await _store.CompleteAttemptAsync(stale.Lease, Succeeded, default);

        var lost = await _store.RenewLeasesAsync([live.Lease, stale.Lease], Lease, default);

        Assert.Equal([stale.Lease.JobId], lost);
    }

    [Fact]
    public async Task RenewLeasesAsync_KeepsLeaseFromExpiring()
    {
        var leased = await InsertAndLeaseAsync();
        _time.Advance(TimeSpan.FromSeconds(20));
        await _store.RenewLeasesAsync([leased.Lease], Lease, default);
        _time.Advance(TimeSpan.FromSeconds(20));

        Assert.Empty(await _store.ReclaimExpiredLeasesAsync(default));
        Assert.Equal(JobState.Running, (await _store.GetAsync(leased.Lease.JobId, default))!.State);
    }

    [Fact]
    public async Task ReclaimExpiredLeasesAsync_ExpiredLease_QueuesJobAgainWithCheckpoint()
    {
        var leased = await InsertAndLeaseAsync();
        await _store.SaveCheckpointAsync(leased.Lease, "7"u8.ToArray(), default);
        _time.Advance(Lease);

        var reclaimed = await _store.ReclaimExpiredLeasesAsync(default);

        var job = Assert.Single(reclaimed);
        Assert.Equal(JobState.Queued, job.State);
        Assert.Equal(AttemptOutcome.LeaseExpired, job.Attempts[0].Outcome);
        Assert.Equal("7"u8.ToArray(), job.Checkpoint!.Value.ToArray());
        await Assert.ThrowsAsync<StaleFenceTokenException>(() => _store.SaveCheckpointAsync(leased.Lease, "late"u8.ToArray(), default).AsTask());
    }

    [Fact]
    public async Task RequestCancellationAsync_QueuedJob_IsCancelledAndNotLeasable()
    {
        var job = NewJob();
        await _store.InsertAsync(job, default);

        var cancelled = await _store.RequestCancellationAsync(job.Id, "no longer needed", default);

        Assert.Equal(JobState.Cancelled, cancelled.State);
        Assert.Equal("no longer needed", cancelled.CancelReason);
        Assert.Null(await _store.TryAcquireLeaseAsync(job.Id, "w1", Lease, default));
    }

    [Fact]
    public async Task RequestCancellationAsync_RunningJob_MarksAndPublishesRequest()
    {
        var leased = await InsertAndLeaseAsync();
        using var subscription = _events.Subscribe(new JobEventFilter { JobId = leased.Lease.JobId });

        var marked = await _store.RequestCancellationAsync(leased.Lease.JobId, "stop", default);

        Assert.Equal(JobState.Running, marked.State);
        Assert.True(marked.CancelRequested);
        Assert.True(subscription.Reader.TryRead(out var e));
        Assert.Equal(JobEventKind.CancellationRequested, e.Kind);
        Assert.Equal("stop", e.Message);
    }

    [Fact]
    public async Task CompleteAttemptAsync_RetryAfterCancelRequest_BecomesCancelled()
    {
        var leased = await InsertAndLeaseAsync();
        await _store.RequestCancellationAsync(leased.Lease.JobId, "stop", default);

        var state = await _store.CompleteAttemptAsync(leased.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Scheduled, DueAt = _time.GetUtcNow().AddMinutes(1) }, default);

        Assert.Equal(JobState.Cancelled, state);
        Assert.Equal(JobState.Cancelled, (await _store.GetAsync(leased.Lease.JobId, default))!.State);
    }

    [Fact]
    public async Task RequestCancellationAsync_UnknownJob_ThrowsNotFound()
    {
        var id = JobId.New(_time);

        var e = await Assert.ThrowsAsync<JobNotFoundException>(() => _store.RequestCancellationAsync(id, null, default).AsTask());

        Assert.Equal(id, e.JobId);
    }

    [Fact]
    public async Task CompleteAttemptAsync_Scheduled_RecordsOutcomeAndDueTime()
    {
        var leased = await InsertAndLeaseAsync();
        var due = _time.GetUtcNow().AddSeconds(5);

        var state = await _store.CompleteAttemptAsync(leased.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Scheduled, DueAt = due, Error = "boom", ErrorType = "System.IO.IOException" }, default);

        Assert.Equal(JobState.Scheduled, state);
        var job = (await _store.GetAsync(leased.Lease.JobId, default))!;
        Assert.Equal(JobState.Scheduled, job.State);
        Assert.Equal(due, job.DueAt);
        Assert.Equal("boom", job.LastError);
        var attempt = Assert.Single(job.Attempts);
        Assert.Equal(AttemptOutcome.Failed, attempt.Outcome);
        Assert.Equal("System.IO.IOException", attempt.ErrorType);
        Assert.NotNull(attempt.EndedAt);
    }

    [Fact]
    public async Task ListAsync_FiltersAndPagesOldestFirst()
    {
        var ids = new List<JobId>();
        for (var i = 0; i < 5; i++)
        {
            var job = NewJob(new JobRequest("work") { Tenant = i % 2 == 0 ? "even" : "odd", Labels = new Dictionary<string, string> { ["n"] = i.ToString(System.Globalization.CultureInfo.InvariantCulture) } });
            ids.Add(job.Id);
            await _store.InsertAsync(job, default);
        }

        var page1 = await _store.ListAsync(new JobQuery { Tenant = "even", PageSize = 2 }, default);
        var page2 = await _store.ListAsync(new JobQuery { Tenant = "even", PageSize = 2, ContinuationToken = page1.ContinuationToken }, default);
        var labelled = await _store.ListAsync(new JobQuery { Labels = new Dictionary<string, string> { ["n"] = "3" } }, default);

        Assert.Equal([ids[0], ids[2]], page1.Items.Select(j => j.Id));
        Assert.NotNull(page1.ContinuationToken);
        Assert.Equal([ids[4]], page2.Items.Select(j => j.Id));
        Assert.Null(page2.ContinuationToken);
        Assert.Equal([ids[3]], labelled.Items.Select(j => j.Id));
        Assert.Empty((await _store.ListAsync(new JobQuery { State = JobState.Running }, default)).Items);
    }

    [Fact]
    public async Task ListAsync_APage_ReadsOnlyTheJobsFromItsContinuationPointOn()
    {
        var labelled = new JobRequest("work") { Labels = new Dictionary<string, string> { ["k"] = "v" } };
        var ids = new List<JobId>();
        for (var i = 0; i < 1_000; i++)
        {
            var job = NewJob(labelled);
            ids.Add(job.Id);
            await _store.InsertAsync(job, default);
        }

        // The store asks the query's labels once per job it considers: a page considers its jobs and the next match
        // (which says there is a next page), not every job in the store.
        var labels = new CountingLabels(new Dictionary<string, string> { ["k"] = "v" });
        var query = new JobQuery { Labels = labels, PageSize = 10 };
        var listed = new List<JobId>();
        var reads = new List<int>();
        string? token = null;
        do
        {
            labels.Reads = 0;
            var page = await _store.ListAsync(query with { ContinuationToken = token }, default);
            reads.Add(labels.Reads);
            listed.AddRange(page.Items.Select(j => j.Id));
            token = page.ContinuationToken;
        }
        while (token is not null);

        Assert.Equal(ids, listed);
        Assert.Equal(100, reads.Count);
        Assert.All(reads.Take(99), r => Assert.Equal(11, r));
        Assert.Equal(10, reads[^1]);
    }

    [Fact]
    public async Task ListAsync_AfterManyEvictions_PagesTheKeptJobsInOrder()
    {
        // MaxFinishedJobs is 3. Every seventh job stays queued; the others finish and all but the last 3 are evicted, so
        // the list's order index passes over removed jobs at its head, in its middle, and squeezes them out as it fills.
        var inserted = new List<JobId>();
        var queued = new HashSet<JobId>();
        var finished = new List<JobId>();
        for (var i = 0; i < 2_000; i++)
        {
            if (i % 7 == 0)
            {
                var job = NewJob();
                await _store.InsertAsync(job, default);
                inserted.Add(job.Id);
                queued.Add(job.Id);
                continue;
            }

            var leased = await InsertAndLeaseAsync();
            inserted.Add(leased.Lease.JobId);
            await _store.CompleteAttemptAsync(leased.Lease, Succeeded, default);
            finished.Add(leased.Lease.JobId);
        }

        var last3 = finished.TakeLast(3).ToList();
        var listed = new List<JobId>();
        string? token = null;
        do
        {
            var page = await _store.ListAsync(new JobQuery { PageSize = 7, ContinuationToken = token }, default);
            listed.AddRange(page.Items.Select(j => j.Id));
            token = page.ContinuationToken;
        }
        while (token is not null);

        Assert.Equal(inserted.Where(id => queued.Contains(id) || last3.Contains(id)), listed);
        Assert.Equal(_store.Count, listed.Count);
        Assert.Equal(last3, (await _store.ListAsync(new JobQuery { State = JobState.Succeeded }, default)).Items.Select(j => j.Id));
    }

    /// <summary>Labels to match that count how often a store reads them.</summary>
    private sealed class CountingLabels(Dictionary<string, string> labels) : IReadOnlyDictionary<string, string>
    {
        public int Reads { get; set; }

        public string this[string key] => labels[key];

        public IEnumerable<string> Keys => labels.Keys;

        public IEnumerable<string> Values => labels.Values;

        public int Count => labels.Count;

        public bool ContainsKey(string key) => labels.ContainsKey(key);

        public bool TryGetValue(string key, [System.Diagnostics.CodeAnalysis.MaybeNullWhen(false)] out string value) => labels.TryGetValue(key, out value);

        public IEnumerator<KeyValuePair<string, string>> GetEnumerator()
        {
            Reads++;
            return labels.GetEnumerator();
        }

        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }

    [Fact]
    public async Task ListAsync_ForeignContinuationToken_Throws()
    {
        await Assert.ThrowsAsync<ArgumentException>(() => _store.ListAsync(new JobQuery { ContinuationToken = "abc" }, default).AsTask());
    }

    [Fact]
    public async Task FinishedJobs_BeyondRetention_OldestAreRemoved()
    {
        var finished = new List<JobId>();
        for (var i = 0; i < 4; i++)
        {
            var leased = await InsertAndLeaseAsync();
            await _store.CompleteAttemptAsync(leased.Lease, Succeeded, default);
            finished.Add(leased.Lease.JobId);
        }

        var running = await InsertAndLeaseAsync();

        Assert.Null(await _store.GetAsync(finished[0], default));
        Assert.NotNull(await _store.GetAsync(finished[1], default));
        Assert.NotNull(await _store.GetAsync(running.Lease.JobId, default));
    }

    [Fact]
    public async Task StateChanges_ArePublishedInOrder()
    {
        var job = NewJob();
        using var subscription = _events.Subscribe(new JobEventFilter { JobId = job.Id });
        await _store.InsertAsync(job, default);
        var leased = (await _store.TryAcquireLeaseAsync(job.Id, "w1", Lease, default))!;
        await _store.ReportProgressAsync(leased.Lease, new JobProgress(0.5, "half"), default);
        await _store.CompleteAttemptAsync(leased.Lease, Succeeded, default);

        var events = new List<JobEvent>();
        while (subscription.Reader.TryRead(out var e))
        {
            events.Add(e);
        }

        Assert.Equal(
            [(JobEventKind.StateChanged, JobState.Queued), (JobEventKind.StateChanged, JobState.Running), (JobEventKind.Progress, JobState.Running), (JobEventKind.StateChanged, JobState.Succeeded)],
            events.Select(e => (e.Kind, e.State)));
        Assert.Equal(JobState.Running, events[^1].PreviousState);
        Assert.Equal(0.5, events[2].Progress!.Value.Fraction);
        Assert.Equal([0, 1, 1, 1], events.Select(e => e.Attempt));
    }

    [Fact]
    public async Task Attempts_NobodyReadBetween_AreAllKeptInOrder()
    {
        var first = await InsertAndLeaseAsync(worker: "w1");
        _time.Advance(TimeSpan.FromSeconds(1));
        await _store.CompleteAttemptAsync(first.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Queued, Error = "one", ExitCode = 1 }, default);
        var second = (await _store.TryAcquireLeaseAsync(first.Lease.JobId, "w2", Lease, default))!;
        _time.Advance(TimeSpan.FromSeconds(1));
        await _store.CompleteAttemptAsync(second.Lease, new AttemptCompletion { Outcome = AttemptOutcome.TimedOut, NextState = JobState.Queued, Error = "two", ErrorType = "T" }, default);
        var third = (await _store.TryAcquireLeaseAsync(first.Lease.JobId, "w3", Lease, default))!;
        _time.Advance(TimeSpan.FromSeconds(1));
        await _store.CompleteAttemptAsync(third.Lease, Succeeded, default);

        var job = (await _store.GetAsync(first.Lease.JobId, default))!;

        Assert.Equal((0, 1, 2), (first.FailedAttempts, second.FailedAttempts, third.FailedAttempts));
        Assert.Equal((1, 2, 3), (first.Lease.Attempt, second.Lease.Attempt, third.Lease.Attempt));
        Assert.Equal(JobState.Succeeded, job.State);
        Assert.Equal(third.Lease.FenceToken, job.FenceToken);
        Assert.Equal(_time.GetUtcNow(), job.UpdatedAt);
        Assert.Equal("two", job.LastError);
        Assert.Null(job.DueAt);
        Assert.Equal(
            [(1, "w1", first.Lease.FenceToken, AttemptOutcome.Failed, "one", null, 1), (2, "w2", second.Lease.FenceToken, AttemptOutcome.TimedOut, "two", "T", null), (3, "w3", third.Lease.FenceToken, AttemptOutcome.Succeeded, null, null, null)],
            job.Attempts.Select(a => (a.Number, a.WorkerId, a.FenceToken, a.Outcome!.Value, a.Error, a.ErrorType, a.ExitCode)));
        Assert.Equal(job.CreatedAt.AddSeconds(3), job.Attempts[^1].EndedAt);
        Assert.Equal(job.CreatedAt.AddSeconds(2), job.Attempts[^1].StartedAt);
    }

    [Fact]
    public async Task Snapshot_ReadWhileRunning_StaysAsItWasAndTheAttemptEndsInPlace()
    {
        var leased = await InsertAndLeaseAsync();
        var running = (await _store.GetAsync(leased.Lease.JobId, default))!;
        var again = (await _store.GetAsync(leased.Lease.JobId, default))!;
        _time.Advance(TimeSpan.FromSeconds(2));
        var due = _time.GetUtcNow().AddSeconds(5);

        await _store.CompleteAttemptAsync(leased.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Scheduled, DueAt = due, Error = "boom" }, default);
        var scheduled = (await _store.GetAsync(leased.Lease.JobId, default))!;

        Assert.Same(running, again);
        Assert.Equal(JobState.Running, running.State);
        Assert.Null(Assert.Single(running.Attempts).Outcome);
        Assert.Equal(JobState.Scheduled, scheduled.State);
        Assert.Equal(due, scheduled.DueAt);
        var attempt = Assert.Single(scheduled.Attempts);
        Assert.Equal((AttemptOutcome.Failed, "boom", _time.GetUtcNow()), (attempt.Outcome!.Value, attempt.Error, attempt.EndedAt!.Value));
        Assert.Null(await _store.TryAcquireLeaseAsync(leased.Lease.JobId, "w1", Lease, default));
    }

    [Fact]
    public async Task TryAcquireLeaseAsync_AfterReclaim_HandsOverCheckpointAndFailureCount()
    {
        var leased = await InsertAndLeaseAsync();
        await _store.SaveCheckpointAsync(leased.Lease, "7"u8.ToArray(), default);
        _time.Advance(Lease);
        await _store.ReclaimExpiredLeasesAsync(default);

        var again = (await _store.TryAcquireLeaseAsync(leased.Lease.JobId, "w2", Lease, default))!;

        Assert.Equal("7"u8.ToArray(), again.Checkpoint!.Value.ToArray());
        Assert.Equal(1, again.FailedAttempts);
        Assert.Equal(leased.Request, again.Request);
        Assert.False(again.CancelRequested);
    }

    private static AttemptCompletion FailedForGood => new() { Outcome = AttemptOutcome.Failed, NextState = JobState.Failed, Error = "boom" };

    [Fact]
    public async Task RequeueAsync_FailedJob_QueuedAgainWithItsAttempts_NextLeaseIsAttempt2()
    {
        var leased = await InsertAndLeaseAsync(new JobRequest("work") { DedupeKey = "k" });
        await _store.CompleteAttemptAsync(leased.Lease, FailedForGood, default);
        using var stop = new CancellationTokenSource();
        await using var heard = _events.SubscribeAsync(new JobEventFilter { JobId = leased.Lease.JobId }, stop.Token).GetAsyncEnumerator();
        var first = heard.MoveNextAsync().AsTask();
        _time.Advance(TimeSpan.FromSeconds(5));

        var requeued = await _store.RequeueAsync(leased.Lease.JobId, default);

        Assert.Equal((JobState.Queued, _time.GetUtcNow(), 1, "boom"), (requeued.State, requeued.UpdatedAt, requeued.Attempts.Count, requeued.LastError));
        Assert.Equal(requeued, await _store.GetAsync(requeued.Id, default));
        Assert.True(await first.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal((JobState.Queued, (JobState?)JobState.Failed, "Retried by request."), (heard.Current.State, heard.Current.PreviousState, heard.Current.Message));

        // The dedupe key is held again: a new job with it attaches.
        Assert.True((await _store.InsertAsync(NewJob(new JobRequest("work") { DedupeKey = "k" }), default)).Attached);
        var again = (await _store.TryAcquireLeaseAsync(requeued.Id, "w2", Lease, default))!;
        Assert.Equal((2, 1), (again.Lease.Attempt, again.FailedAttempts));
    }

    [Fact]
    public async Task RequeueAsync_CancelledJob_ClearsTheCancellation()
    {
        var job = NewJob();
        await _store.InsertAsync(job, default);
        await _store.RequestCancellationAsync(job.Id, "stop", default);

        var requeued = await _store.RequeueAsync(job.Id, default);

        Assert.Equal((JobState.Queued, false, (string?)null), (requeued.State, requeued.CancelRequested, requeued.CancelReason));
        var leased = (await _store.TryAcquireLeaseAsync(job.Id, "w1", Lease, default))!;
        Assert.False(leased.CancelRequested);
        Assert.Equal(JobState.Succeeded, await _store.CompleteAttemptAsync(leased.Lease, Succeeded, default));
    }

    [Fact]
    public async Task RequeueAsync_NotFailedOrCancelled_OrKeyTaken_Throws_NothingChanges()
    {
        var running = await InsertAndLeaseAsync();
        var error = await Assert.ThrowsAsync<JobStateException>(async () => await _store.RequeueAsync(running.Lease.JobId, default));
        Assert.Equal(JobState.Running, error.State);
        await Assert.ThrowsAsync<JobNotFoundException>(async () => await _store.RequeueAsync(JobId.New(_time), default));

        var failed = await InsertAndLeaseAsync(new JobRequest("work") { DedupeKey = "k" });
        await _store.CompleteAttemptAsync(failed.Lease, FailedForGood, default);
        var holder = NewJob(new JobRequest("work") { DedupeKey = "k" });
        await _store.InsertAsync(holder, default);
        var taken = await Assert.ThrowsAsync<JobStateException>(async () => await _store.RequeueAsync(failed.Lease.JobId, default));
        Assert.Contains(holder.Id.ToString(), taken.Message, StringComparison.Ordinal);
        Assert.Equal(JobState.Failed, (await _store.GetAsync(failed.Lease.JobId, default))!.State);
    }

    [Fact]
    public async Task RequeueAsync_ARetriedJob_IsNotEvictedAsFinished()
    {
        // MaxFinishedJobs is 3: the retried job was the oldest finished one, and must not be evicted while it waits.
        var retried = await InsertAndLeaseAsync();
        await _store.CompleteAttemptAsync(retried.Lease, FailedForGood, default);
        await _store.RequeueAsync(retried.Lease.JobId, default);
        for (var i = 0; i < 4; i++)
        {
            var other = await InsertAndLeaseAsync();
            await _store.CompleteAttemptAsync(other.Lease, Succeeded, default);
        }

        Assert.Equal(JobState.Queued, (await _store.GetAsync(retried.Lease.JobId, default))?.State);
        Assert.Equal(4, _store.Count);
    }

    [Fact]
    public async Task RequeueAsync_RetriedJobFinishesAgain_EvictedOnceAsTheOldestFinished()
    {
        // MaxFinishedJobs is 3. A fails, is retried and succeeds: its first place in the eviction order is skipped.
        var a = await InsertAndLeaseAsync();
        await _store.CompleteAttemptAsync(a.Lease, FailedForGood, default);
        await _store.RequeueAsync(a.Lease.JobId, default);
        var again = (await _store.TryAcquireLeaseAsync(a.Lease.JobId, "w1", Lease, default))!;
        await _store.CompleteAttemptAsync(again.Lease, Succeeded, default);
        var others = new List<JobId>();
        for (var i = 0; i < 2; i++)
        {
            var other = await InsertAndLeaseAsync();
            await _store.CompleteAttemptAsync(other.Lease, Succeeded, default);
            others.Add(other.Lease.JobId);
        }

        Assert.Equal(3, _store.Count);
        var last = await InsertAndLeaseAsync();
        await _store.CompleteAttemptAsync(last.Lease, Succeeded, default);

        Assert.Null(await _store.GetAsync(a.Lease.JobId, default));
        foreach (var id in others.Append(last.Lease.JobId))
        {
            Assert.NotNull(await _store.GetAsync(id, default));
        }

        Assert.Equal(3, _store.Count);
    }

    [Fact]
    public async Task RequeueAsync_CancelledBeforeItsNotBefore_IsScheduledForIt()
    {
        var notBefore = _time.GetUtcNow().AddHours(1);
        var job = NewJob(new JobRequest("work") { NotBefore = notBefore }) with { State = JobState.Scheduled, DueAt = notBefore };
        await _store.InsertAsync(job, default);
        await _store.RequestCancellationAsync(job.Id, null, default);

        var requeued = await _store.RequeueAsync(job.Id, default);

        Assert.Equal((JobState.Scheduled, (DateTimeOffset?)notBefore), (requeued.State, requeued.DueAt));
        Assert.Null(await _store.TryAcquireLeaseAsync(job.Id, "w1", Lease, default));
        _time.Advance(TimeSpan.FromHours(1));
        Assert.NotNull(await _store.TryAcquireLeaseAsync(job.Id, "w1", Lease, default));
    }

    [Fact]
    public async Task FinishedJob_NobodyRead_IsNoObjectOfItsOwn_AndReadsBackWhole()
    {
        var (submitted, request, id, createdAt) = SubmitRunAndFail();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();

        var job = (await _store.GetAsync(id, default))!;

        // Neither the submitted record nor its request is kept: the finished job is packed into the store's chunks.
        Assert.False(submitted.TryGetTarget(out _));
        Assert.False(request.TryGetTarget(out _));
        Assert.Equal(new JobRequest("work") { Tenant = "t" }, job.Request with { Input = default, Labels = new JobRequest("work").Labels });
        Assert.Equal(("{}", "1"), (System.Text.Encoding.UTF8.GetString(job.Request.Input.Span), job.Request.Labels["a"]));
        Assert.Equal((id, JobState.Failed, createdAt, createdAt.AddSeconds(3), "boom"), (job.Id, job.State, job.CreatedAt, job.UpdatedAt, job.LastError));
        var attempt = Assert.Single(job.Attempts);
        Assert.Equal((1, "w1", job.FenceToken, AttemptOutcome.Failed, createdAt.AddSeconds(1), createdAt.AddSeconds(3)), (attempt.Number, attempt.WorkerId, attempt.FenceToken, attempt.Outcome!.Value, attempt.StartedAt, attempt.EndedAt!.Value));
        Assert.Equal([id], (await _store.ListAsync(new JobQuery { Tenant = "t", Labels = new Dictionary<string, string> { ["a"] = "1" } }, default)).Items.Select(j => j.Id));
        Assert.Empty((await _store.ListAsync(new JobQuery { Tenant = "t", Workload = "other" }, default)).Items);

        // A retry by request starts from the whole record again.
        var requeued = await _store.RequeueAsync(id, default);
        Assert.Equal((JobState.Queued, createdAt, 1, "t"), (requeued.State, requeued.CreatedAt, requeued.Attempts.Count, requeued.Tenant));
        Assert.Equal(requeued, await _store.GetAsync(id, default));
    }

    [Fact]
    public async Task FinishedJobs_Evicted_GiveTheirChunksBack_AndTheKeptOnesReadBackIntact()
    {
        for (var i = 0; i < 2_000; i++)
        {
            var leased = await InsertAndLeaseAsync(new JobRequest("work") { Input = new byte[1_000], CorrelationId = i.ToString(System.Globalization.CultureInfo.InvariantCulture) });
            await _store.CompleteAttemptAsync(leased.Lease, Succeeded, default);
        }

        // 2 MB were packed in all; with 3 jobs kept, chunks are reused instead of piling up.
        Assert.InRange(_store.PackedChunks, 1, 2);
        var kept = (await _store.ListAsync(new JobQuery(), default)).Items;
        Assert.Equal(["1997", "1998", "1999"], kept.Select(j => j.Request.CorrelationId));
        Assert.All(kept, j => Assert.Equal(1_000, j.Request.Input.Length));
    }

    [Theory]
    [InlineData(true, 0)]
    [InlineData(false, 300_000)]
    public async Task FinishedJob_NotPackable_ReadsBackExactly(bool loneSurrogate, int inputLength)
    {
        // Built here: xunit would replace a lone surrogate in the theory's data.
        var correlationId = loneSurrogate ? "lone " + new string('\ud800', 1) + " surrogate" : "fits";
        var leased = await InsertAndLeaseAsync(new JobRequest("work") { CorrelationId = correlationId, Input = new byte[inputLength] });
        await _store.CompleteAttemptAsync(leased.Lease, Succeeded, default);

        var job = (await _store.GetAsync(leased.Lease.JobId, default))!;

        Assert.Equal((JobState.Succeeded, correlationId, inputLength), (job.State, job.Request.CorrelationId, job.Request.Input.Length));
    }

    [Fact]
    public async Task FinishedJob_WithACheckpoint_KeepsItForReaders()
    {
        var leased = await InsertAndLeaseAsync();
        await _store.SaveCheckpointAsync(leased.Lease, "7"u8.ToArray(), default);
        await _store.CompleteAttemptAsync(leased.Lease, Succeeded, default);

        var job = (await _store.GetAsync(leased.Lease.JobId, default))!;

        Assert.Equal((JobState.Succeeded, "7"), (job.State, System.Text.Encoding.UTF8.GetString(job.Checkpoint!.Value.Span)));
    }

    // Not inlined, so that no local of the test keeps the submitted record or its request reachable.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private (WeakReference<JobRecord> Submitted, WeakReference<JobRequest> Request, JobId Id, DateTimeOffset CreatedAt) SubmitRunAndFail()
    {
        var job = NewJob(new JobRequest("work") { Tenant = "t", Input = "{}"u8.ToArray(), Labels = new Dictionary<string, string> { ["a"] = "1" } });
        Assert.False(_store.InsertAsync(job, default).AsTask().GetAwaiter().GetResult().Attached);
        _time.Advance(TimeSpan.FromSeconds(1));
        var leased = _store.TryAcquireLeaseAsync(job.Id, "w1", Lease, default).AsTask().GetAwaiter().GetResult()!;
        _time.Advance(TimeSpan.FromSeconds(2));
        _store.CompleteAttemptAsync(leased.Lease, FailedForGood, default).AsTask().GetAwaiter().GetResult();
        return (new WeakReference<JobRecord>(job), new WeakReference<JobRequest>(job.Request), job.Id, job.CreatedAt);
    }
}
