using JobRunner.InMemory;
using JobEvents = JobRunner.Events.JobEventBus;
using JobRunner.Tests.Support;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Tests.Client;

public sealed class JobClientTests : IAsyncDisposable
{
    private readonly TestHost _host = new();

    public ValueTask DisposeAsync() => _host.DisposeAsync();

    private int StoredJobs => _host.Services.GetRequiredService<InMemoryJobStore>().Count;

    private async Task<JobValidationException> SubmitInvalidAsync(JobRequest request)
    {
        var e = await Assert.ThrowsAsync<JobValidationException>(() => _host.Client.SubmitAsync(request).AsTask());
        Assert.False(e.IsTransient);
        Assert.Equal(0, StoredJobs);
        Assert.Equal(0, _host.Services.GetRequiredService<InMemoryJobQueue>().Depth);
        return e;
    }

    [Fact]
    public async Task SubmitAsync_UnregisteredWorkload_NamesTheFix()
    {
        var e = await SubmitInvalidAsync(new JobRequest("resize"));

        var error = Assert.Single(e.Errors);
        Assert.Contains("'resize' is not registered", error, StringComparison.Ordinal);
        Assert.Contains("registered: orders, work", error, StringComparison.Ordinal);
        Assert.Contains("AddWorkload<T>(\"resize\")", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(11)]
    [InlineData(-5)]
    public async Task SubmitAsync_PriorityOutsideRange_IsRejected(int priority)
    {
        var e = await SubmitInvalidAsync(new JobRequest("work") { Priority = priority });

        Assert.Contains($"Priority {priority} is outside 1–10", Assert.Single(e.Errors), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(0)]
    public async Task SubmitAsync_NonPositiveTimeout_IsRejected(int seconds)
    {
        var e = await SubmitInvalidAsync(new JobRequest("work") { Timeout = TimeSpan.FromSeconds(seconds) });

        Assert.Contains("is not positive", Assert.Single(e.Errors), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("")]
    [InlineData("null")]
    public async Task SubmitAsync_TypedWorkloadWithoutInput_IsRejected(string input)
    {
        var e = await SubmitInvalidAsync(new JobRequest("orders") { Input = System.Text.Encoding.UTF8.GetBytes(input) });

        Assert.Contains("requires an input (Order)", Assert.Single(e.Errors), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("")]
    [InlineData("has space")]
    [InlineData("-leading")]
    [InlineData("trailing.")]
    [InlineData("ünïcode")]
    public async Task SubmitAsync_InvalidTenant_IsRejected(string tenant)
    {
        var e = await SubmitInvalidAsync(new JobRequest("work") { Tenant = tenant });

        Assert.Contains($"Tenant '{tenant}' is not a valid name", Assert.Single(e.Errors), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("bad key", "v")]
    [InlineData("Example.com/app", "v")]
    [InlineData("app", "not valid!")]
    public async Task SubmitAsync_InvalidLabel_IsRejected(string key, string value)
    {
        var e = await SubmitInvalidAsync(new JobRequest("work") { Labels = new Dictionary<string, string> { [key] = value } });

        Assert.Contains("Label", Assert.Single(e.Errors), StringComparison.Ordinal);
    }

    [Fact]
    public async Task SubmitAsync_ManyProblems_ListsEveryOne()
    {
        var e = await SubmitInvalidAsync(new JobRequest("orders") { Priority = 42, Tenant = "a b", Timeout = TimeSpan.FromSeconds(-3), DedupeKey = "" });

        Assert.Equal(5, e.Errors.Count);
        Assert.Contains("5 problems", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task SubmitAsync_KeysOrCorrelationIdWithNulOrBrokenSurrogates_AreRejectedNamingTheFix()
    {
        // Built in code: xunit's theory data does not carry lone surrogates intact.
        var cases = new (JobRequest Request, string Field, string Problem)[]
        {
            (new JobRequest("work") { DedupeKey = "a\0b" }, "DedupeKey", "a NUL character (U+0000) at index 1"),
            (new JobRequest("work") { ConcurrencyKey = "k\uD800" }, "ConcurrencyKey", "an unpaired surrogate (U+D800) at index 1"),
            (new JobRequest("work") { CorrelationId = "\uDC00x" }, "CorrelationId", "an unpaired surrogate (U+DC00) at index 0"),
        };

        foreach (var (request, field, problem) in cases)
        {
            var error = Assert.Single((await SubmitInvalidAsync(request)).Errors);
            Assert.StartsWith(field, error, StringComparison.Ordinal);
            Assert.Contains(problem, error, StringComparison.Ordinal);
            Assert.Contains("Use text without NUL", error, StringComparison.Ordinal);
        }

        Assert.Equal(0, StoredJobs);
        var accepted = await _host.Client.SubmitAsync(new JobRequest("work") { DedupeKey = "r\u00e9sum\u00e9 \U0001F600", CorrelationId = "\U0001F600" });
        Assert.Equal(JobState.Queued, accepted.Job.State);
    }

    [Fact]
    public async Task SubmitAsync_ValidLabelsAndTenant_AreAccepted()
    {
        var result = await _host.Client.SubmitAsync(new JobRequest("work")
        {
            Tenant = "acme.eu-1",
            Labels = new Dictionary<string, string> { ["app.kubernetes.io/name"] = "resize", ["tier"] = "" },
        });

        Assert.Equal(JobState.Queued, result.Job.State);
        Assert.Equal(1, StoredJobs);
    }

    [Fact]
    public async Task SubmitAsync_NotBeforeInFuture_IsScheduled()
    {
        var at = _host.Time.GetUtcNow().AddMinutes(10);

        var result = await _host.Client.SubmitAsync(new JobRequest("work") { NotBefore = at });

        Assert.Equal(JobState.Scheduled, result.Job.State);
        Assert.Equal(at, result.Job.DueAt);
    }

    [Fact]
    public async Task SubmitAsync_SameLiveDedupeKey_Attaches()
    {
        var first = await _host.Client.SubmitAsync(new JobRequest("work") { DedupeKey = "nightly" });
        var second = await _host.Client.SubmitAsync(new JobRequest("work") { DedupeKey = "nightly", Priority = 9 });

        Assert.True(second.Attached);
        Assert.Equal(first.Id, second.Id);
        Assert.Equal(1, _host.Services.GetRequiredService<InMemoryJobQueue>().Depth);
    }

    [Fact]
    public async Task ListAsync_PageSizeOutOfRange_IsRejected()
    {
        await Assert.ThrowsAsync<JobValidationException>(() => _host.Client.ListAsync(new JobQuery { PageSize = 0 }).AsTask());
        await Assert.ThrowsAsync<JobValidationException>(() => _host.Client.ListAsync(new JobQuery { PageSize = 1001 }).AsTask());
    }

    [Fact]
    public async Task CancelAsync_UnknownJob_ThrowsNotFound()
    {
        await Assert.ThrowsAsync<JobNotFoundException>(() => _host.Client.CancelAsync(JobId.New(_host.Time)).AsTask());
    }

    [Fact]
    public async Task WatchAsync_UnknownJob_ThrowsNotFound()
    {
        await Assert.ThrowsAsync<JobNotFoundException>(async () =>
        {
            await foreach (var _ in _host.Client.WatchAsync(JobId.New(_host.Time)))
            {
            }
        });
    }

    [Fact]
    public async Task WatchAsync_FinishedJob_YieldsCurrentStateAndEnds()
    {
        var id = await _host.SubmitAsync(new JobRequest("work"));
        await _host.Client.CancelAsync(id, "changed my mind");

        var events = new List<JobEvent>();
        await foreach (var e in _host.Client.WatchAsync(id))
        {
            events.Add(e);
        }

        var only = Assert.Single(events);
        Assert.Equal(JobState.Cancelled, only.State);
        Assert.Equal("changed my mind", only.Message);
    }

    [Fact]
    public async Task WatchAsync_FailedAndRetriedBetweenSubscribeAndSnapshot_DoesNotEndOnTheStaleFailure()
    {
        // The watch subscribes, then reads the job: in between, attempt 1 fails and a RetryAsync queues the job again.
        RetryBeforeRead? store = null;
        await using var host = new TestHost(r => r.UseStore(sp => store = new RetryBeforeRead(sp.GetRequiredService<InMemoryJobStore>())));
        var fail = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = async (context, ct) =>
        {
            if (context.Attempt == 1)
            {
                await fail.Task.WaitAsync(ct);
                throw new PermanentJobException("attempt 1 fails");
            }
        };
        await host.StartAsync();
        var id = await host.SubmitAsync(new JobRequest("work"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        store!.BeforeRead = async () =>
        {
            fail.SetResult();
            await host.WaitForStateAsync(id, JobState.Failed);
            await host.Client.RetryAsync(id);
        };

        var events = new List<JobEvent>();
        using var stop = new CancellationTokenSource(TestHost.WaitLimit);
        await foreach (var e in host.Client.WatchAsync(id, stop.Token))
        {
            events.Add(e);
        }

        Assert.Equal(JobState.Succeeded, events[^1].State);
        Assert.DoesNotContain(events, e => e.State == JobState.Failed);
    }

    /// <summary>Submits a job, leases it (no worker runs), and watches it up to its first event, Running.</summary>
    private async Task<(JobLease Lease, IAsyncEnumerator<JobEvent> Watch)> WatchRunningAsync()
    {
        var id = await _host.SubmitAsync(new JobRequest("work"));
        var leased = await _host.Store.TryAcquireLeaseAsync(id, "w1", TimeSpan.FromMinutes(1), default);
        var watch = _host.Client.WatchAsync(id).GetAsyncEnumerator();
        Assert.True(await watch.MoveNextAsync());
        Assert.Equal(JobState.Running, watch.Current.State);
        return (leased!.Lease, watch);
    }

    /// <summary>Reports progress 0, 1, … <paramref name="count"/> - 1, more than the bus buffers for a watcher that reads nothing meanwhile.</summary>
    private async Task FloodAsync(JobLease lease, int count)
    {
        for (var i = 0; i < count; i++)
        {
            await _host.Store.ReportProgressAsync(lease, new JobProgress(null, i.ToString(System.Globalization.CultureInfo.InvariantCulture)), default);
        }
    }

    [Fact]
    public async Task WatchAsync_WatcherFallsBehind_YieldsTheJobReadAgain_ThenGoesOn()
    {
        var (lease, watch) = await WatchRunningAsync();
        await using (watch)
        {
            await FloodAsync(lease, JobEvents.Capacity + 10);

            Assert.True(await watch.MoveNextAsync());
            var resumed = watch.Current;
            Assert.Equal((JobEventKind.StateChanged, JobState.Running, JobState.Running), (resumed.Kind, resumed.State, resumed.PreviousState));
            Assert.Contains("fell behind", resumed.Message, StringComparison.Ordinal);
            Assert.Equal((JobEvents.Capacity + 9).ToString(System.Globalization.CultureInfo.InvariantCulture), resumed.Progress?.Message);

            await _host.Store.CompleteAttemptAsync(lease, new AttemptCompletion { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded }, default);
            var rest = new List<JobEvent>();
            while (await watch.MoveNextAsync())
            {
                rest.Add(watch.Current);
            }

            // The buffered events after the gap (the 10 oldest were dropped), then the end.
            Assert.Equal(JobEvents.Capacity + 1, rest.Count);
            Assert.Equal("10", rest[0].Progress?.Message);
            Assert.All(rest.SkipLast(1), e => Assert.Equal(JobEventKind.Progress, e.Kind));
            Assert.Equal((JobEventKind.StateChanged, JobState.Succeeded), (rest[^1].Kind, rest[^1].State));
        }
    }

    [Fact]
    public async Task WatchAsync_WatcherFallsBehindAndTheJobEnds_EndsOnItsFinalState()
    {
        var (lease, watch) = await WatchRunningAsync();
        await using (watch)
        {
            await FloodAsync(lease, JobEvents.Capacity + 10);
            await _host.Store.CompleteAttemptAsync(lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Failed, Error = "disk full" }, default);

            Assert.True(await watch.MoveNextAsync());
            var last = watch.Current;
            Assert.Equal((JobEventKind.StateChanged, JobState.Failed, JobState.Running, "disk full"), (last.Kind, last.State, last.PreviousState, last.Message));
            Assert.False(await watch.MoveNextAsync());
        }
    }

    /// <summary>Runs <see cref="BeforeRead"/> once, before the next read of a job.</summary>
    private sealed class RetryBeforeRead(IJobStore inner) : JobRunner.Testing.DelegatingJobStore(inner)
    {
        public Func<Task>? BeforeRead { get; set; }

        public override async ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken)
        {
            if (BeforeRead is { } before && Interlocked.Exchange(ref _once, 1) == 0)
            {
                await before();
            }

            return await Inner.GetAsync(id, cancellationToken);
        }

        private int _once;
    }

    [Fact]
    public async Task RetryAsync_FailedJob_RunsAgainFromItsCheckpoint_AndSucceeds()
    {
        // The first attempt checkpoints and fails for good (no retries left); the retried one resumes and succeeds.
        _host.Behavior.Run = async (context, ct) =>
        {
            if (context.Attempt == 1)
            {
                await context.SaveCheckpointAsync("half"u8.ToArray(), ct);
                throw new PermanentJobException("the upstream file was missing");
            }
        };
        await _host.StartAsync();
        var id = await _host.SubmitAsync(new JobRequest("work"));
        await _host.WaitForStateAsync(id, JobState.Failed);

        var retried = await _host.Client.RetryAsync(id);

        Assert.Equal(JobState.Queued, retried.State);
        var job = await _host.WaitForStateAsync(id, JobState.Succeeded);
        Assert.Equal([AttemptOutcome.Failed, AttemptOutcome.Succeeded], job.Attempts.Select(a => a.Outcome!.Value));
        Assert.Equal((2, "half"), (_host.Behavior.Started[1].Attempt, _host.Behavior.Started[1].Checkpoint));
        var again = await Assert.ThrowsAsync<JobStateException>(() => _host.Client.RetryAsync(id).AsTask());
        Assert.Contains("only a Failed or Cancelled job can be retried", again.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RetryAsync_RetriesUsedUp_GetsOneAttempt_NotAnotherAutomaticRetry()
    {
        _host.Behavior.Run = (_, _) => throw new IOException("still down");
        await _host.StartAsync();
        var id = await _host.SubmitAsync(new JobRequest("work") { Retry = RetryPolicy.Fixed(TimeSpan.Zero, maxAttempts: 2) });
        await _host.WaitForStateAsync(id, JobState.Failed);

        Assert.Equal(JobState.Queued, (await _host.Client.RetryAsync(id)).State);
        var job = await _host.WaitForStateAsync(id, JobState.Failed);

        Assert.Equal(3, job.Attempts.Count);
        Assert.All(job.Attempts, a => Assert.Equal(AttemptOutcome.Failed, a.Outcome));
    }

    /// <summary>The in-memory queue, refusing the enqueues <see cref="Refuse"/> says.</summary>
    private sealed class RefusingQueue(IJobQueue inner) : IJobQueue
    {
        public Func<QueuedJob, bool> Refuse { get; set; } = _ => false;

        public ValueTask EnqueueAsync(QueuedJob job, CancellationToken cancellationToken)
            => Refuse(job) ? throw new InvalidOperationException("The queue is down.") : inner.EnqueueAsync(job, cancellationToken);

        public ValueTask<int> DequeueAsync(Memory<QueuedJob> buffer, TimeSpan visibility, CancellationToken cancellationToken) => inner.DequeueAsync(buffer, visibility, cancellationToken);

        public ValueTask AcknowledgeAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken) => inner.AcknowledgeAsync(jobs, cancellationToken);

        public ValueTask ReturnAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken) => inner.ReturnAsync(jobs, cancellationToken);

        public ValueTask ExtendAsync(IReadOnlyList<QueuedJob> jobs, TimeSpan visibility, CancellationToken cancellationToken) => inner.ExtendAsync(jobs, visibility, cancellationToken);
    }

    private static (TestHost Host, Func<RefusingQueue> Queue) HostWithRefusingQueue()
    {
        RefusingQueue? queue = null;
        var host = new TestHost(r => r.UseQueue(sp => queue = new RefusingQueue(sp.GetRequiredService<InMemoryJobQueue>())));
        _ = host.Client;
        return (host, () => queue!);
    }

    [Fact]
    public async Task SubmitAsync_QueueRefuses_CancelsTheStoredJob_SoThatItsDedupeKeyIsFree()
    {
        var (host, queue) = HostWithRefusingQueue();
        await using var _ = host;
        queue().Refuse = _ => true;

        var e = await Assert.ThrowsAsync<JobsNotQueuedException>(() => host.Client.SubmitAsync(new JobRequest("work") { DedupeKey = "k" }).AsTask());

        Assert.True(e.IsTransient);
        Assert.Equal([0], e.NotQueued);
        Assert.Equal("The queue is down.", e.InnerException!.Message);
        Assert.Equal(JobState.Cancelled, e.Results[0].Job.State);
        var stored = await host.Client.GetAsync(e.Results[0].Job.Id);
        Assert.Equal(JobState.Cancelled, stored!.State);

        // Submitted again once the queue is back: a new job, not the cancelled one.
        queue().Refuse = _ => false;
        var again = await host.Client.SubmitAsync(new JobRequest("work") { DedupeKey = "k" });
        Assert.False(again.Attached);
        Assert.NotEqual(stored.Id, again.Job.Id);
    }

    [Fact]
    public async Task SubmitManyAsync_QueueRefusesSome_CancelsThose_QueuesTheOthers_AndSaysWhich()
    {
        var (host, queue) = HostWithRefusingQueue();
        await using var _ = host;
        var requests = Enumerable.Range(0, 4).Select(i => new JobRequest("work") { CorrelationId = "c" + i }).ToArray();
        var calls = 0;
        queue().Refuse = _ => ++calls is 2 or 4;

        var e = await Assert.ThrowsAsync<JobsNotQueuedException>(() => host.Client.SubmitManyAsync(requests).AsTask());

        Assert.Equal([1, 3], e.NotQueued);
        Assert.Equal(4, e.Results.Count);
        Assert.Equal(2, host.Services.GetRequiredService<InMemoryJobQueue>().Depth);
        for (var i = 0; i < 4; i++)
        {
            var stored = await host.Client.GetAsync(e.Results[i].Job.Id);
            var expected = e.NotQueued.Contains(i) ? JobState.Cancelled : JobState.Queued;
            Assert.Equal(expected, stored!.State);
            Assert.Equal(expected, e.Results[i].Job.State);
            Assert.Equal("c" + i, stored.Request.CorrelationId);
        }
    }

    [Fact]
    public async Task SubmitManyAsync_EnqueuesTheJobsTogether_NotOneRoundTripAfterAnother()
    {
        GatedQueue? queue = null;
        await using var host = new TestHost(r => r.UseQueue(sp => queue = new GatedQueue(sp.GetRequiredService<InMemoryJobQueue>())));
        var requests = Enumerable.Range(0, 3).Select(i => new JobRequest("work") { CorrelationId = "c" + i }).ToArray();

        var submit = host.Client.SubmitManyAsync(requests).AsTask();

        // Every job is handed to the queue while none of its writes has finished (a queue such as SQS groups them).
        Assert.Equal(3, queue!.Pending.Count);
        Assert.False(submit.IsCompleted);
        for (var i = 2; i >= 0; i--)
        {
            queue.Pending[i].SetResult();
        }

        var results = await submit;
        Assert.Equal(["c0", "c1", "c2"], results.Select(r => r.Job.Request.CorrelationId));
        Assert.Equal(3, host.Services.GetRequiredService<InMemoryJobQueue>().Depth);
    }

    /// <summary>A queue whose writes finish only when the test says so, one signal per write, in call order.</summary>
    private sealed class GatedQueue(IJobQueue inner) : IJobQueue
    {
        public List<TaskCompletionSource> Pending { get; } = [];

        public async ValueTask EnqueueAsync(QueuedJob job, CancellationToken cancellationToken)
        {
            var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Pending.Add(gate);
            await gate.Task;
            await inner.EnqueueAsync(job, cancellationToken);
        }

        public ValueTask<int> DequeueAsync(Memory<QueuedJob> buffer, TimeSpan visibility, CancellationToken cancellationToken) => inner.DequeueAsync(buffer, visibility, cancellationToken);

        public ValueTask AcknowledgeAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken) => inner.AcknowledgeAsync(jobs, cancellationToken);

        public ValueTask ReturnAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken) => inner.ReturnAsync(jobs, cancellationToken);

        public ValueTask ExtendAsync(IReadOnlyList<QueuedJob> jobs, TimeSpan visibility, CancellationToken cancellationToken) => inner.ExtendAsync(jobs, visibility, cancellationToken);
    }

    [Fact]
    public async Task RetryAsync_QueueRefuses_LeavesTheJobCancelled_AndCanBeRetriedAgain()
    {
        var (host, queue) = HostWithRefusingQueue();
        await using var _ = host;
        var job = (await host.Client.SubmitAsync(new JobRequest("work"))).Job;
        await host.Client.CancelAsync(job.Id);
        queue().Refuse = _ => true;

        var e = await Assert.ThrowsAsync<JobsNotQueuedException>(() => host.Client.RetryAsync(job.Id).AsTask());

        Assert.Equal(JobState.Cancelled, (await host.Client.GetAsync(job.Id))!.State);
        queue().Refuse = _ => false;
        Assert.Equal(JobState.Queued, (await host.Client.RetryAsync(job.Id)).State);
    }
}

