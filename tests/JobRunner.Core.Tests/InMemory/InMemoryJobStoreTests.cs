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
        Assert.NotEqual(leased.Job.Id, again.Id);
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
        var again = (await _store.TryAcquireLeaseAsync(a.Job.Id, "w2", Lease, default))!;

        Assert.True(b.Lease.FenceToken > a.Lease.FenceToken);
        Assert.True(again.Lease.FenceToken > b.Lease.FenceToken);
        Assert.Equal(2, again.Lease.Attempt);
        Assert.Equal(JobState.Running, again.Job.State);
        Assert.Equal(again.Lease.FenceToken, again.Job.FenceToken);
        Assert.Equal(["w1", "w2"], again.Job.Attempts.Select(x => x.WorkerId));
    }

    [Fact]
    public async Task TryAcquireLeaseAsync_AlreadyRunning_ReturnsNull()
    {
        var leased = await InsertAndLeaseAsync();

        Assert.Null(await _store.TryAcquireLeaseAsync(leased.Job.Id, "w2", Lease, default));
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
        var second = (await _store.TryAcquireLeaseAsync(first.Job.Id, "w2", Lease, default))!;
        var before = await _store.GetAsync(first.Job.Id, default);

        var checkpoint = await Assert.ThrowsAsync<StaleFenceTokenException>(() => _store.SaveCheckpointAsync(first.Lease, "stale"u8.ToArray(), default).AsTask());
        await Assert.ThrowsAsync<StaleFenceTokenException>(() => _store.ReportProgressAsync(first.Lease, new JobProgress(0.5, "stale"), default).AsTask());
        await Assert.ThrowsAsync<StaleFenceTokenException>(() => _store.CompleteAttemptAsync(first.Lease, Succeeded, default).AsTask());

        Assert.Equal(first.Lease.FenceToken, checkpoint.PresentedToken);
        Assert.Equal(second.Lease.FenceToken, checkpoint.CurrentToken);
        Assert.Equal(before, await _store.GetAsync(first.Job.Id, default));
        Assert.Equal("1"u8.ToArray(), (await _store.GetAsync(first.Job.Id, default))!.Checkpoint!.Value.ToArray());
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

        Assert.Equal([stale.Job.Id], lost);
    }

    [Fact]
    public async Task RenewLeasesAsync_KeepsLeaseFromExpiring()
    {
        var leased = await InsertAndLeaseAsync();
        _time.Advance(TimeSpan.FromSeconds(20));
        await _store.RenewLeasesAsync([leased.Lease], Lease, default);
        _time.Advance(TimeSpan.FromSeconds(20));

        Assert.Empty(await _store.ReclaimExpiredLeasesAsync(default));
        Assert.Equal(JobState.Running, (await _store.GetAsync(leased.Job.Id, default))!.State);
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
        using var subscription = _events.Subscribe(new JobEventFilter { JobId = leased.Job.Id });

        var marked = await _store.RequestCancellationAsync(leased.Job.Id, "stop", default);

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
        await _store.RequestCancellationAsync(leased.Job.Id, "stop", default);

        var job = await _store.CompleteAttemptAsync(leased.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Scheduled, DueAt = _time.GetUtcNow().AddMinutes(1) }, default);

        Assert.Equal(JobState.Cancelled, job.State);
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

        var job = await _store.CompleteAttemptAsync(leased.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Scheduled, DueAt = due, Error = "boom", ErrorType = "System.IO.IOException" }, default);

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
            finished.Add(leased.Job.Id);
        }

        var running = await InsertAndLeaseAsync();

        Assert.Null(await _store.GetAsync(finished[0], default));
        Assert.NotNull(await _store.GetAsync(finished[1], default));
        Assert.NotNull(await _store.GetAsync(running.Job.Id, default));
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
    }
}
