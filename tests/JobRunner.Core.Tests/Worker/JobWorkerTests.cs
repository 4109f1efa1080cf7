using System.Text;
using JobRunner.InMemory;
using JobRunner.Testing;
using JobRunner.Tests.Support;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Tests.Worker;

public sealed class JobWorkerTests
{
    private static readonly RetryPolicy Immediately3 = RetryPolicy.Fixed(TimeSpan.Zero, maxAttempts: 3);

    private static string? CheckpointText(JobRecord job) => job.Checkpoint is { } c ? Encoding.UTF8.GetString(c.Span) : null;

    [Fact]
    public async Task Run_Success_SucceedsWithOneAttempt()
    {
        await using var host = await new TestHost().StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work"));
        var job = await host.WaitForStateAsync(id, JobState.Succeeded);

        var attempt = Assert.Single(job.Attempts);
        Assert.Equal(AttemptOutcome.Succeeded, attempt.Outcome);
        Assert.Equal(1, attempt.Number);
        Assert.True(attempt.FenceToken > 0);
    }

    [Fact]
    public async Task Run_TypedWorkload_GetsItsInput()
    {
        await using var host = new TestHost();
        Order? seen = null;
        host.Behavior.Run = (context, _) =>
        {
            seen = context.GetInput<Order>();
            return ValueTask.CompletedTask;
        };
        await host.StartAsync();

        var id = await host.SubmitAsync(JobRequest.Create("orders", new Order("apples", 3)));
        await host.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal(new Order("apples", 3), seen);
    }

    [Fact]
    public async Task Run_Priorities_StartHighestFirstThenFifo()
    {
        await using var host = new TestHost(r => r.ConfigureWorker(w => w.Slots = 1));
        var low = await host.SubmitAsync(new JobRequest("work") { Priority = 1 });
        var normal1 = await host.SubmitAsync(new JobRequest("work") { Priority = 5 });
        var urgent = await host.SubmitAsync(new JobRequest("work") { Priority = 10 });
        var normal2 = await host.SubmitAsync(new JobRequest("work") { Priority = 5 });
        await host.StartAsync();

        await host.WaitForStateAsync(low, JobState.Succeeded);

        Assert.Equal([urgent, normal1, normal2, low], host.Behavior.Started.Select(s => s.Job));
    }

    [Fact]
    public async Task Run_TransientFailure_WaitsScheduledWithoutASlot_ThenRetries()
    {
        await using var host = new TestHost(r => r.ConfigureWorker(w => w.Slots = 1));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        // Told apart by their request: a job may start before SubmitAsync has returned its id.
        host.Behavior.Run = async (context, ct) =>
        {
            if (context.Request.CorrelationId == "flaky")
            {
                if (context.Attempt == 1)
                {
                    throw new IOException("upstream unavailable");
                }

                return;
            }

            await release.Task.WaitAsync(ct);
        };
        await host.StartAsync();

        var failedAt = host.Time.GetUtcNow();
        var flaky = await host.SubmitAsync(new JobRequest("work") { CorrelationId = "flaky" });
        var scheduled = await host.WaitForStateAsync(flaky, JobState.Scheduled);

        Assert.Equal(failedAt + TimeSpan.FromSeconds(5), scheduled.DueAt);
        Assert.Equal("upstream unavailable", scheduled.LastError);

        // The only slot is free while the retry waits: another job runs.
        var other = await host.SubmitAsync(new JobRequest("work"));
        await host.WaitForStateAsync(other, JobState.Running);
        release.SetResult();
        await host.WaitForStateAsync(other, JobState.Succeeded);

        host.Time.Advance(TimeSpan.FromSeconds(5));
        var job = await host.WaitForStateAsync(flaky, JobState.Succeeded);

        Assert.Equal([AttemptOutcome.Failed, AttemptOutcome.Succeeded], job.Attempts.Select(a => a.Outcome!.Value));
        Assert.Equal(typeof(IOException).FullName, job.Attempts[0].ErrorType);
    }

    [Fact]
    public async Task Run_PermanentJobException_FailsWithoutRetry()
    {
        await using var host = new TestHost();
        host.Behavior.Run = (_, _) => throw new PermanentJobException("the file is corrupt");
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Retry = Immediately3 });
        var job = await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Single(job.Attempts);
        Assert.Equal("the file is corrupt", job.LastError);
    }

    [Fact]
    public async Task Run_ClassifierRuleByType_FailsWithoutRetry()
    {
        await using var host = new TestHost(r => r.AddWorkload<DelegateWorkload>("strict", w => w.Classifier.Permanent<ArgumentException>()));
        host.Behavior.Run = (_, _) => throw new ArgumentOutOfRangeException("size");
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("strict") { Retry = Immediately3 });
        var job = await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Single(job.Attempts);
    }

    [Fact]
    public async Task Run_ClassifierPredicate_FailsWithoutRetry()
    {
        await using var host = new TestHost(r => r.AddWorkload<DelegateWorkload>("picky", w => w.Classifier.When(e => e.Message.StartsWith("fatal", StringComparison.Ordinal), FailureKind.Permanent)));
        host.Behavior.Run = (_, _) => throw new InvalidOperationException("fatal: bad config");
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("picky") { Retry = Immediately3 });
        var job = await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Single(job.Attempts);
    }

    [Fact]
    public async Task Run_AlwaysFailing_FailsAfterMaxAttempts()
    {
        await using var host = new TestHost();
        host.Behavior.Run = (_, _) => throw new IOException("still down");
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Retry = Immediately3 });
        var job = await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Equal(3, job.Attempts.Count);
        Assert.All(job.Attempts, a => Assert.Equal(AttemptOutcome.Failed, a.Outcome));
        Assert.Equal([1, 2, 3], job.Attempts.Select(a => a.Number));
    }

    [Fact]
    public async Task Run_WorkloadRetryPolicy_AppliesWhenRequestHasNone()
    {
        await using var host = new TestHost(r => r.AddWorkload<DelegateWorkload>("once", w => w.Retry = RetryPolicy.None));
        host.Behavior.Run = (_, _) => throw new IOException("down");
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("once"));
        var job = await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Single(job.Attempts);
    }

    [Fact]
    public async Task Run_FailureAfterCheckpoint_NextAttemptStartsFromCheckpoint()
    {
        await using var host = new TestHost();
        host.Behavior.Run = async (context, ct) =>
        {
            if (context.Attempt == 1)
            {
                await context.SaveCheckpointAsync(new Progress(5), ct);
                throw new InvalidOperationException("crashed at item 6");
            }

            Assert.True(context.TryGetCheckpoint<Progress>(out var checkpoint));
            Assert.Equal(5, checkpoint!.Done);
        };
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Retry = Immediately3 });
        var job = await host.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal([(1, null), (2, "{\"done\":5}")], host.Behavior.Started.Select(s => (s.Attempt, s.Checkpoint)));
        Assert.Equal("{\"done\":5}", CheckpointText(job));
    }

    [Fact]
    public async Task Run_Timeout_FailsAsTimedOut()
    {
        await using var host = new TestHost();
        host.Behavior.Run = async (_, ct) => await Task.Delay(Timeout.Infinite, ct);
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Timeout = TimeSpan.FromSeconds(10) });
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        host.Time.Advance(TimeSpan.FromSeconds(10));
        var job = await host.WaitForStateAsync(id, JobState.Failed);

        var attempt = Assert.Single(job.Attempts);
        Assert.Equal(AttemptOutcome.TimedOut, attempt.Outcome);
        Assert.Equal(typeof(JobTimeoutException).FullName, attempt.ErrorType);
    }

    [Fact]
    public async Task Run_WorkloadTimeout_AppliesWhenRequestHasNone()
    {
        await using var host = new TestHost(r => r.AddWorkload<DelegateWorkload>("bounded", w => w.Timeout = TimeSpan.FromSeconds(3)));
        host.Behavior.Run = async (_, ct) => await Task.Delay(Timeout.Infinite, ct);
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("bounded"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        host.Time.Advance(TimeSpan.FromSeconds(3));
        var job = await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Equal(AttemptOutcome.TimedOut, Assert.Single(job.Attempts).Outcome);
    }

    [Fact]
    public async Task Cancel_RunningCooperativeWorkload_JobCancelled()
    {
        await using var host = new TestHost();
        host.Behavior.Run = async (_, ct) => await Task.Delay(Timeout.Infinite, ct);
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Retry = Immediately3 });
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        await host.Client.CancelAsync(id, "user pressed stop");
        var job = await host.WaitForStateAsync(id, JobState.Cancelled);

        var attempt = Assert.Single(job.Attempts);
        Assert.Equal(AttemptOutcome.Cancelled, attempt.Outcome);
        Assert.Equal("Cancelled: user pressed stop", attempt.Error);
    }

    [Fact]
    public async Task Cancel_ListenerFellBehindAndMissedTheRequest_StopsTheAttemptFromTheStore()
    {
        var bus = new DroppingBus(new JobRunner.Events.JobEventBus());
        await using var host = new TestHost(services: s => s.AddSingleton<IJobEventBus>(bus));
        host.Behavior.Run = async (_, ct) => await Task.Delay(Timeout.Infinite, ct);
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Retry = Immediately3 });
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        await host.Client.CancelAsync(id, "user pressed stop");
        bus.Drop.SetResult();
        var job = await host.WaitForStateAsync(id, JobState.Cancelled);

        var attempt = Assert.Single(job.Attempts);
        Assert.Equal(AttemptOutcome.Cancelled, attempt.Outcome);
        Assert.Equal("Cancelled: user pressed stop", attempt.Error);
    }

    /// <summary>
    /// The in-process bus, except that the first stream of cancellation requests (the worker's) takes none and, once
    /// <see cref="Drop"/> is set, ends as a bus ends a stream that fell behind.
    /// </summary>
    private sealed class DroppingBus(IJobEventBus inner) : IJobEventBus
    {
        private int _dropped;

        public TaskCompletionSource Drop { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public bool HasSubscribers => inner.HasSubscribers;

        public bool IsWatched(JobEventKind kind) => inner.IsWatched(kind);

        public bool IsWatched(JobEvent jobEvent) => inner.IsWatched(jobEvent);

        public void Publish(JobEvent jobEvent) => inner.Publish(jobEvent);

        public IAsyncEnumerable<JobEvent> SubscribeAsync(JobEventFilter filter, CancellationToken cancellationToken)
            => filter.Kinds?.Contains(JobEventKind.CancellationRequested) == true && Interlocked.Exchange(ref _dropped, 1) == 0
                ? DropAsync(cancellationToken)
                : inner.SubscribeAsync(filter, cancellationToken);

        private async IAsyncEnumerable<JobEvent> DropAsync([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
        {
            await Drop.Task.WaitAsync(cancellationToken);
            if (cancellationToken.CanBeCanceled)
            {
                throw new JobEventsDroppedException(1);
            }

            yield break;
        }
    }

    [Fact]
    public async Task Cancel_RequestForAnotherAttempt_DoesNotStopTheRunningOne()
    {
        // A job retried by request runs again: a late request meant for its earlier attempt must not stop the new one.
        await using var host = new TestHost();
        host.Behavior.Run = async (_, ct) => await Task.Delay(Timeout.Infinite, ct);
        await host.StartAsync();
        var id = await host.SubmitAsync(new JobRequest("work"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        var events = host.Services.GetRequiredService<IJobEventBus>();
        JobEvent Request(int attempt, string message)
            => JobEvent.ForAttempt(JobEventKind.CancellationRequested, id, "default", "work", host.Time.GetUtcNow(), attempt, message);

        // Handled in order: had the first stopped the attempt, its message would be the one recorded.
        events.Publish(Request(attempt: 7, "meant for another attempt"));
        events.Publish(Request(attempt: 1, "meant for this one"));
        var job = await host.WaitForStateAsync(id, JobState.Cancelled);

        Assert.Equal("Cancelled: meant for this one", Assert.Single(job.Attempts).Error);
    }

    [Fact]
    public async Task Cancel_WorkloadIgnoresToken_AbandonedAfterGraceAndSlotFreed()
    {
        await using var host = new TestHost(r => r.ConfigureWorker(w => w.Slots = 1));
        var never = new TaskCompletionSource();
        // Told apart by its request: the job may start before SubmitAsync has returned its id.
        host.Behavior.Run = (context, _) => context.Request.CorrelationId == "stubborn" ? new ValueTask(never.Task) : ValueTask.CompletedTask;
        await host.StartAsync();

        var stubborn = await host.SubmitAsync(new JobRequest("work") { CorrelationId = "stubborn" });
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        await host.Client.CancelAsync(stubborn, "stop now");
        await host.WaitForStateAsync(stubborn, JobState.Cancelled);

        var next = await host.SubmitAsync(new JobRequest("work"));
        await host.WaitForStateAsync(next, JobState.Succeeded);
    }

    [Fact]
    public async Task Run_OneSlot_FinishedAttemptsSourceReused_CancelledOnesNot_NextTokenNeverCancelled()
    {
        await using var host = new TestHost(r => r.ConfigureWorker(w => w.Slots = 1));
        var tokens = new List<(string? Name, CancellationToken Token, bool CancelledAtStart)>();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = async (context, ct) =>
        {
            lock (tokens)
            {
                tokens.Add((context.Request.CorrelationId, ct, ct.IsCancellationRequested));
            }

            if (context.Request.CorrelationId == "cancelled")
            {
                started.SetResult();
                await Task.Delay(Timeout.Infinite, ct);
            }
        };
        await host.StartAsync();

        // One at a time, so that each runs on the one slot after the one before ended.
        var first = await host.SubmitAsync(new JobRequest("work") { CorrelationId = "first" });
        await host.WaitForStateAsync(first, JobState.Succeeded);
        var cancelled = await host.SubmitAsync(new JobRequest("work") { CorrelationId = "cancelled" });
        await started.Task.WaitAsync(TestHost.WaitLimit);
        await host.Client.CancelAsync(cancelled, "stop");
        await host.WaitForStateAsync(cancelled, JobState.Cancelled);
        var last = await host.SubmitAsync(new JobRequest("work") { CorrelationId = "last" });
        await host.WaitForStateAsync(last, JobState.Succeeded);

        Assert.Equal(["first", "cancelled", "last"], tokens.Select(t => t.Name));
        Assert.All(tokens, t => Assert.False(t.CancelledAtStart));
        Assert.Equal(tokens[0].Token, tokens[1].Token);
        Assert.NotEqual(tokens[1].Token, tokens[2].Token);
        Assert.False(tokens[2].Token.IsCancellationRequested);
    }

    [Fact]
    public async Task Cancel_ScheduledJob_NeverRuns()
    {
        await using var host = await new TestHost().StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { NotBefore = host.Time.GetUtcNow().AddMinutes(1) });
        var cancelled = await host.Client.CancelAsync(id, "not needed");
        host.Time.Advance(TimeSpan.FromMinutes(2));
        var marker = await host.SubmitAsync(new JobRequest("work"));
        await host.WaitForStateAsync(marker, JobState.Succeeded);

        Assert.Equal(JobState.Cancelled, cancelled.State);
        Assert.DoesNotContain(host.Behavior.Started, s => s.Job == id);
        Assert.Empty((await host.Client.GetAsync(id))!.Attempts);
    }

    [Fact]
    public async Task Run_DelayedJob_StartsAtNotBefore()
    {
        await using var host = await new TestHost().StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { NotBefore = host.Time.GetUtcNow().AddMinutes(1) });
        host.Time.Advance(TimeSpan.FromSeconds(59));
        Assert.Equal(JobState.Scheduled, (await host.Client.GetAsync(id))!.State);
        host.Time.Advance(TimeSpan.FromSeconds(1));
        var job = await host.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal(host.Time.GetUtcNow(), job.Attempts[0].StartedAt);
    }

    [Fact]
    public async Task Shutdown_CheckpointRequested_ReleasesLease_NextHostResumesFromCheckpoint()
    {
        var first = new TestHost(r => r.ConfigureWorker(w => w.ShutdownGracePeriod = TimeSpan.FromSeconds(10)));
        first.Behavior.Run = async (context, ct) =>
        {
            await context.SaveCheckpointAsync(new Progress(1), ct);
            await Task.Delay(Timeout.Infinite, context.CheckpointRequested);
        };
        first.Behavior.Run = WrapCheckpointOnRequest(first.Behavior.Run);
        await first.StartAsync();
        var id = await first.SubmitAsync(new JobRequest("work"));
        await first.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);

        await first.StopAsync();
        var released = (await first.Client.GetAsync(id))!;

        Assert.Equal(JobState.Queued, released.State);
        Assert.Equal(AttemptOutcome.Interrupted, Assert.Single(released.Attempts).Outcome);
        Assert.Equal("{\"done\":2}", CheckpointText(released));

        var store = first.Services.GetRequiredService<InMemoryJobStore>();
        var queue = first.Services.GetRequiredService<InMemoryJobQueue>();
        await using var second = new TestHost(r => r.UseStore(_ => store).UseQueue(_ => queue), time: first.Time);
        await second.StartAsync();
        var job = await first.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal(2, job.Attempts.Count);
        Assert.Equal([(2, "{\"done\":2}")], second.Behavior.Started.Select(s => (s.Attempt, s.Checkpoint)));
        await first.DisposeAsync();
    }

    private static Func<WorkloadContext, CancellationToken, ValueTask> WrapCheckpointOnRequest(Func<WorkloadContext, CancellationToken, ValueTask> run)
        => async (context, ct) =>
        {
            try
            {
                await run(context, ct);
            }
            catch (OperationCanceledException) when (context.CheckpointRequested.IsCancellationRequested)
            {
                await context.SaveCheckpointAsync(new Progress(2), CancellationToken.None);
                throw;
            }
        };

    [Fact]
    public async Task Shutdown_WorkloadIgnoresCheckpointRequest_InterruptedAfterGrace()
    {
        await using var host = new TestHost();
        var never = new TaskCompletionSource();
        host.Behavior.Run = (_, _) => new ValueTask(never.Task);
        await host.StartAsync();
        var id = await host.SubmitAsync(new JobRequest("work"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);

        await host.StopAsync();

        var job = (await host.Client.GetAsync(id))!;
        Assert.Equal(JobState.Queued, job.State);
        Assert.Equal(AttemptOutcome.Interrupted, job.Attempts[0].Outcome);
    }

    [Fact]
    public async Task Crash_LeaseExpires_WorkerTakesOverFromCheckpoint_AndStaleWritesAreRejected()
    {
        await using var host = new TestHost();
        var id = await host.SubmitAsync(new JobRequest("work"));

        // A worker that leased the job, checkpointed, and died without a word.
        var taken = new QueuedJob[1];
        await host.Queue.DequeueAsync(taken, TimeSpan.FromSeconds(30), default);
        var dead = (await host.Store.TryAcquireLeaseAsync(id, "dead-worker", TimeSpan.FromSeconds(30), default))!;
        await host.Store.SaveCheckpointAsync(dead.Lease, Encoding.UTF8.GetBytes("3"), default);

        await host.StartAsync();
        host.Time.Advance(TimeSpan.FromSeconds(30));
        var job = await host.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal([(2, "3")], host.Behavior.Started.Select(s => (s.Attempt, s.Checkpoint)));
        Assert.Equal([AttemptOutcome.LeaseExpired, AttemptOutcome.Succeeded], job.Attempts.Select(a => a.Outcome!.Value));
        await Assert.ThrowsAsync<StaleFenceTokenException>(() => host.Store.SaveCheckpointAsync(dead.Lease, Encoding.UTF8.GetBytes("late"), default).AsTask());
        await Assert.ThrowsAsync<StaleFenceTokenException>(() => host.Store.CompleteAttemptAsync(dead.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Failed }, default).AsTask());
        Assert.Equal(JobState.Succeeded, (await host.Client.GetAsync(id))!.State);
    }

    [Fact]
    public async Task Heartbeat_RenewsLease_LongJobIsNotTakenBack()
    {
        SignalingStore? signaling = null;
        await using var host = new TestHost(r => r.UseStore(sp => signaling = new SignalingStore(sp.GetRequiredService<InMemoryJobStore>())));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = async (_, ct) => await release.Task.WaitAsync(ct);
        await host.StartAsync();
        var id = await host.SubmitAsync(new JobRequest("work"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);

        for (var i = 0; i < 6; i++)
        {
            host.Time.Advance(TimeSpan.FromSeconds(10));
            var renewed = await signaling!.Renewals.Reader.ReadAsync().AsTask().WaitAsync(TestHost.WaitLimit);
            Assert.Equal([id], renewed.Select(l => l.JobId));
        }

        Assert.Equal(JobState.Running, (await host.Client.GetAsync(id))!.State);
        release.SetResult();
        var job = await host.WaitForStateAsync(id, JobState.Succeeded);
        Assert.Single(job.Attempts);
    }

    [Fact]
    public async Task Cancel_RequestedWhenTheLeaseIsGranted_WorkloadNeverRuns()
    {
        // A store that reports, with the lease, a cancellation requested before the attempt started.
        await using var host = new TestHost(r => r.UseStore(sp => new CancelledAtLease(sp.GetRequiredService<InMemoryJobStore>())));
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Retry = Immediately3 });
        var job = await host.WaitForStateAsync(id, JobState.Cancelled);

        Assert.Empty(host.Behavior.Started);
        var attempt = Assert.Single(job.Attempts);
        Assert.Equal(AttemptOutcome.Cancelled, attempt.Outcome);
        Assert.Equal("Cancelled: stopped before it started", attempt.Error);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Heartbeat_TwoAttemptsOfOneJobHere_StopsOnlyTheOneWhoseLeaseWasLost(bool blockerFirst)
    {
        FailingRenewals? store = null;
        await using var host = new TestHost(r => r.UseStore(sp => store = new FailingRenewals(sp.GetRequiredService<InMemoryJobStore>())));
        var blocker = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var second = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new[] { new TaskCompletionSource<CancellationToken>(TaskCreationOptions.RunContinuationsAsynchronously), new TaskCompletionSource<CancellationToken>(TaskCreationOptions.RunContinuationsAsynchronously) };
        var firstStopped = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = async (context, ct) =>
        {
            if (context.Request.CorrelationId == "blocker")
            {
                await blocker.Task;
                return;
            }

            started[context.Attempt - 1].SetResult(ct);
            if (context.Attempt == 1)
            {
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                finally
                {
                    firstStopped.TrySetResult();
                }
            }
            else
            {
                await second.Task.WaitAsync(ct);
            }
        };
        await host.StartAsync();

        // With a blocker in one slot first, the job's first attempt runs in the other slot, and its second, after the
        // blocker is done, in the blocker's; without, the second attempt takes whichever slot the first left free. So
        // the two cases send the two attempts' leases in opposite orders.
        JobId id;
        if (blockerFirst)
        {
            var blockerId = await host.SubmitAsync(new JobRequest("work") { CorrelationId = "blocker" });
            await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
            id = await host.SubmitAsync(new JobRequest("work"));
            await started[0].Task.WaitAsync(TestHost.WaitLimit);
            blocker.SetResult();
            await host.WaitForStateAsync(blockerId, JobState.Succeeded);
        }
        else
        {
            id = await host.SubmitAsync(new JobRequest("work"));
            await started[0].Task.WaitAsync(TestHost.WaitLimit);
        }

        // The store cannot be reached for renewals: the first attempt's lease (30 s) expires, the job is reclaimed, and
        // this worker leases it again while the first attempt still runs.
        store!.Fail = true;
        for (var i = 0; i < 4; i++)
        {
            host.Time.Advance(TimeSpan.FromSeconds(10));
            await store.Failures.Reader.ReadAsync().AsTask().WaitAsync(TestHost.WaitLimit);
        }

        var secondToken = await started[1].Task.WaitAsync(TestHost.WaitLimit);

        // Renewals work again: both leases are sent, and the store names the job as lost (the first lease is stale).
        store.Fail = false;
        host.Time.Advance(TimeSpan.FromSeconds(10));
        var sent = await store.Renewals.Reader.ReadAsync().AsTask().WaitAsync(TestHost.WaitLimit);
        Assert.Equal(2, sent.Count(l => l.JobId == id));
        await firstStopped.Task.WaitAsync(TestHost.WaitLimit);
        Assert.False(secondToken.IsCancellationRequested);

        second.SetResult();
        var job = await host.WaitForStateAsync(id, JobState.Succeeded);
        Assert.Equal([AttemptOutcome.LeaseExpired, AttemptOutcome.Succeeded], job.Attempts.Select(a => a.Outcome!.Value));
    }

    [Fact]
    public async Task Complete_StoreUnreachableForAWhile_OutcomeWrittenOnARetry_JobNotRunAgain()
    {
        FailingCompletions? store = null;
        await using var host = new TestHost(r => r.UseStore(sp => store = new FailingCompletions(sp.GetRequiredService<InMemoryJobStore>(), failures: 5)));
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work"));
        await store!.Failures.Reader.ReadAsync().AsTask().WaitAsync(TestHost.WaitLimit);

        // The worker retries after 1, 2, 4, 8 and 16 s of the fake clock (the sixth try succeeds), and keeps the lease
        // meanwhile, past its first expiry at 30 s: here the store refuses outcomes only, not heartbeats.
        var done = host.WaitForStateAsync(id, JobState.Succeeded);
        for (var i = 0; i < 120 && !done.IsCompleted; i++)
        {
            host.Time.Advance(TimeSpan.FromSeconds(1));
            await Task.WhenAny(done, Task.Delay(TimeSpan.FromMilliseconds(20), TimeProvider.System));
        }

        var job = await done.WaitAsync(TestHost.WaitLimit);
        Assert.Equal(AttemptOutcome.Succeeded, Assert.Single(job.Attempts).Outcome);
        Assert.Single(host.Behavior.Started);
        Assert.Equal(0, host.Services.GetRequiredService<InMemoryJobQueue>().Depth);
    }

    [Fact]
    public async Task Heartbeat_GivingBackParkedJobsHangs_RunningLeasesAreStillRenewed()
    {
        HangingLookups? store = null;
        await using var host = new TestHost(r => r.UseStore(sp => store = new HangingLookups(sp.GetRequiredService<InMemoryJobStore>())));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = (_, ct) => new ValueTask(release.Task.WaitAsync(ct));
        await host.StartAsync();
        var running = await host.SubmitAsync(new JobRequest("work"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        await host.SubmitAsync(new JobRequest("work") { Affinity = "gpu=true" });
        await host.WaitForSchedulerAsync(s => s.ParkedCount == 1);

        // The give-back looks the parked job up in the store, and that look-up never answers.
        store!.Hang = true;
        for (var tick = 0; tick < 2; tick++)
        {
            host.Time.Advance(TimeSpan.FromSeconds(10));
            var renewed = await store.Renewals.Reader.ReadAsync().AsTask().WaitAsync(TestHost.WaitLimit);
            Assert.Equal(running, Assert.Single(renewed).JobId);
        }

        store.Hang = false;
        store.Unblock();
        release.SetResult();
        await host.WaitForStateAsync(running, JobState.Succeeded);
    }

    [Fact]
    public async Task Reclaim_EnqueueFailsTwice_IsRetried_AndTheJobRuns()
    {
        FailingEnqueues? queue = null;
        await using var host = new TestHost(r => r.UseQueue(sp => queue = new FailingEnqueues(sp.GetRequiredService<InMemoryJobQueue>())));
        await host.StartAsync();

        // A worker that died holding the job (its delivery gone): its lease expires, and the sweep queues the job again.
        var store = host.Services.GetRequiredService<IJobStore>();
        var now = host.Time.GetUtcNow();
        var job = new JobRecord { Id = JobId.New(host.Time), Request = new JobRequest("work"), State = JobState.Queued, CreatedAt = now, UpdatedAt = now };
        await store.InsertAsync(job, default);
        Assert.NotNull(await store.TryAcquireLeaseAsync(job.Id, "dead-worker", TimeSpan.FromSeconds(30), default));
        queue!.FailuresLeft = 2;
        host.Time.Advance(TimeSpan.FromSeconds(35));

        // Two failed enqueues, each followed by a back-off on the host's clock, which moves on a second at a time.
        var done = host.WaitForStateAsync(job.Id, JobState.Succeeded);
        while (!done.IsCompleted)
        {
            host.Time.Advance(TimeSpan.FromSeconds(1));
            await Task.WhenAny(done, Task.Delay(TimeSpan.FromMilliseconds(20), TimeProvider.System));
        }

        await done;
        Assert.Equal(2, queue.Failures.Reader.Count);
        Assert.Single(host.Behavior.Started);
    }

    /// <summary>Fails enqueues while <see cref="FailuresLeft"/> is above zero; forwards everything else.</summary>
    private sealed class FailingEnqueues(IJobQueue inner) : IJobQueue
    {
        public int FailuresLeft;

        public System.Threading.Channels.Channel<bool> Failures { get; } = System.Threading.Channels.Channel.CreateUnbounded<bool>();

        public ValueTask EnqueueAsync(QueuedJob job, CancellationToken cancellationToken)
        {
            if (Interlocked.Decrement(ref FailuresLeft) >= 0)
            {
                Failures.Writer.TryWrite(true);
                throw new IOException("The queue cannot be reached.");
            }

            return inner.EnqueueAsync(job, cancellationToken);
        }

        public ValueTask<int> DequeueAsync(Memory<QueuedJob> buffer, TimeSpan visibility, CancellationToken cancellationToken) => inner.DequeueAsync(buffer, visibility, cancellationToken);

        public ValueTask AcknowledgeAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken) => inner.AcknowledgeAsync(jobs, cancellationToken);

        public ValueTask ReturnAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken) => inner.ReturnAsync(jobs, cancellationToken);

        public ValueTask ExtendAsync(IReadOnlyList<QueuedJob> jobs, TimeSpan visibility, CancellationToken cancellationToken) => inner.ExtendAsync(jobs, visibility, cancellationToken);
    }

    /// <summary>Look-ups hang while <see cref="Hang"/> is set (until <see cref="Unblock"/>); renewals are reported.</summary>
    private sealed class HangingLookups(IJobStore inner) : DelegatingJobStore(inner)
    {
        private readonly TaskCompletionSource _unblock = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public volatile bool Hang;

        public System.Threading.Channels.Channel<IReadOnlyList<JobLease>> Renewals { get; } = System.Threading.Channels.Channel.CreateUnbounded<IReadOnlyList<JobLease>>();

        public void Unblock() => _unblock.TrySetResult();

        public override async ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken)
        {
            if (Hang)
            {
                await _unblock.Task.WaitAsync(cancellationToken);
            }

            return await Inner.GetAsync(id, cancellationToken);
        }

        public override async ValueTask<IReadOnlyList<JobId>> RenewLeasesAsync(IReadOnlyList<JobLease> leases, TimeSpan duration, CancellationToken cancellationToken)
        {
            var lost = await Inner.RenewLeasesAsync(leases, duration, cancellationToken);
            Renewals.Writer.TryWrite(leases);
            return lost;
        }
    }

    /// <summary>Throws on outcome writes while failures are left; otherwise forwards them.</summary>
    private sealed class FailingCompletions(IJobStore inner, int failures) : DelegatingJobStore(inner)
    {
        private int _failuresLeft = failures;

        public System.Threading.Channels.Channel<bool> Failures { get; } = System.Threading.Channels.Channel.CreateUnbounded<bool>();

        public override ValueTask<JobState> CompleteAttemptAsync(JobLease lease, AttemptCompletion completion, CancellationToken cancellationToken)
        {
            if (Interlocked.Decrement(ref _failuresLeft) >= 0)
            {
                Failures.Writer.TryWrite(true);
                throw new IOException("The store cannot be reached.");
            }

            return Inner.CompleteAttemptAsync(lease, completion, cancellationToken);
        }
    }

    private sealed class CancelledAtLease(IJobStore inner) : DelegatingJobStore(inner)
    {
        public override async ValueTask<LeasedJob?> TryAcquireLeaseAsync(JobId id, string workerId, TimeSpan duration, CancellationToken cancellationToken)
            => await Inner.TryAcquireLeaseAsync(id, workerId, duration, cancellationToken) is { } leased
                ? leased with { CancelRequested = true, CancelReason = "stopped before it started" }
                : null;
    }

    /// <summary>Throws on renewals while <see cref="Fail"/> is set; otherwise forwards them and reports what was sent.</summary>
    private sealed class FailingRenewals(IJobStore inner) : DelegatingJobStore(inner)
    {
        public volatile bool Fail;

        public System.Threading.Channels.Channel<bool> Failures { get; } = System.Threading.Channels.Channel.CreateUnbounded<bool>();

        public System.Threading.Channels.Channel<IReadOnlyList<JobLease>> Renewals { get; } = System.Threading.Channels.Channel.CreateUnbounded<IReadOnlyList<JobLease>>();

        public override async ValueTask<IReadOnlyList<JobId>> RenewLeasesAsync(IReadOnlyList<JobLease> leases, TimeSpan duration, CancellationToken cancellationToken)
        {
            if (Fail)
            {
                Failures.Writer.TryWrite(true);
                throw new IOException("The store cannot be reached.");
            }

            var lost = await Inner.RenewLeasesAsync(leases, duration, cancellationToken);
            Renewals.Writer.TryWrite(leases);
            return lost;
        }
    }

    [Fact]
    public async Task Run_EachAttempt_GetsItsOwnDiScope()
    {
        var probes = new List<ScopedProbe>();
        await using var host = new TestHost(services: s => s.AddScoped<ScopedProbe>());
        host.Behavior.Run = (context, _) =>
        {
            var probe = context.Services.GetRequiredService<ScopedProbe>();
            lock (probes)
            {
                probes.Add(probe);
            }

            return context.Attempt == 1 ? throw new IOException("again") : ValueTask.CompletedTask;
        };
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Retry = Immediately3 });
        await host.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal(2, probes.Count);
        Assert.NotSame(probes[0], probes[1]);
        Assert.All(probes, p => Assert.True(p.Disposed));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Run_SingletonWorkload_OneInstanceForAllAttempts_StillOneScopePerAttempt(bool singleton)
    {
        await using var host = new TestHost(
            configure: r => r.AddWorkload<InstanceWorkload>("instances"),
            services: s =>
            {
                s.AddScoped<ScopedProbe>();
                s.AddSingleton<InstanceRuns>();
                if (singleton)
                {
                    s.AddSingleton<InstanceWorkload>();
                }
            });
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("instances") { Retry = Immediately3 });
        await host.WaitForStateAsync(id, JobState.Succeeded);

        var runs = host.Services.GetRequiredService<InstanceRuns>().Runs;
        Assert.Equal(2, runs.Count);
        if (singleton)
        {
            Assert.Same(runs[0].Workload, runs[1].Workload);
        }
        else
        {
            Assert.NotSame(runs[0].Workload, runs[1].Workload);
        }

        // Within an attempt one scope (created on the first read when lazy), across attempts a new one, disposed at the end.
        Assert.All(runs, r => Assert.Same(r.First, r.Second));
        Assert.NotSame(runs[0].First, runs[1].First);
        Assert.All(runs, r => Assert.True(r.First.Disposed));
        Assert.Throws<ObjectDisposedException>(() => runs[1].Context.Services.GetService(typeof(ScopedProbe)));
    }

    [Fact]
    public async Task Watch_StreamsStateProgressAndLogs_EndsAtTerminalState()
    {
        await using var host = new TestHost();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = async (context, ct) =>
        {
            await gate.Task.WaitAsync(ct);
            await context.ReportProgressAsync(0.5, "half way", ct);
            await context.LogAsync("hello from the job", cancellationToken: ct);
        };
        await host.StartAsync();
        var id = await host.SubmitAsync(new JobRequest("work"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);

        var events = new List<JobEvent>();
        await using (var watch = host.Client.WatchAsync(id).GetAsyncEnumerator())
        {
            Assert.True(await watch.MoveNextAsync());
            events.Add(watch.Current);
            gate.SetResult();
            while (await watch.MoveNextAsync())
            {
                events.Add(watch.Current);
            }
        }

        Assert.Equal(JobState.Running, events[0].State);
        Assert.Contains(events, e => e.Kind == JobEventKind.Progress && e.Progress == new JobProgress(0.5, "half way"));
        Assert.Contains(events, e => e.Kind == JobEventKind.Log && e.Log!.Message == "hello from the job" && e.Log.Attempt == 1);
        Assert.Equal((JobEventKind.StateChanged, JobState.Succeeded), (events[^1].Kind, events[^1].State));
        var logs = await host.Client.ReadLogsAsync(id);
        Assert.Equal(["hello from the job"], logs.Entries.Select(e => e.Message));
    }

    [Fact]
    public async Task Watch_Filter_SelectsTenant()
    {
        await using var host = await new TestHost().StartAsync();
        using var cts = new CancellationTokenSource(TestHost.WaitLimit);
        await using var watch = host.Client.WatchAsync(new JobEventFilter { Tenant = "blue", Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } }, cts.Token).GetAsyncEnumerator();
        var pending = watch.MoveNextAsync();

        await host.SubmitAsync(new JobRequest("work") { Tenant = "red" });
        var blue = await host.SubmitAsync(new JobRequest("work") { Tenant = "blue" });

        Assert.True(await pending);
        Assert.Equal((blue, "blue", JobState.Queued), (watch.Current.JobId, watch.Current.Tenant, watch.Current.State));
    }

    [Fact]
    public async Task ReportProgress_OutOfRange_Throws()
    {
        await using var host = new TestHost();
        host.Behavior.Run = async (context, ct) => await context.ReportProgressAsync(1.5, null, ct);
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Retry = RetryPolicy.None });
        var job = await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Equal(typeof(ArgumentOutOfRangeException).FullName, job.Attempts[0].ErrorType);
    }

    [Fact]
    public async Task List_ByStateAndWorkload()
    {
        await using var host = await new TestHost().StartAsync();
        var done = await host.SubmitAsync(new JobRequest("work"));
        await host.WaitForStateAsync(done, JobState.Succeeded);
        var waiting = await host.SubmitAsync(new JobRequest("work") { NotBefore = host.Time.GetUtcNow().AddHours(1) });

        var scheduled = await host.Client.ListAsync(new JobQuery { State = JobState.Scheduled, Workload = "work" });
        var succeeded = await host.Client.ListAsync(new JobQuery { State = JobState.Succeeded });

        Assert.Equal([waiting], scheduled.Items.Select(j => j.Id));
        Assert.Equal([done], succeeded.Items.Select(j => j.Id));
    }

    [Fact]
    public async Task Run_ClassifierThrows_JobFailsInsteadOfStayingRunning()
    {
        await using var host = new TestHost(r => r.AddWorkload<DelegateWorkload>("broken", w => w.Classifier.When(_ => throw new InvalidOperationException("classifier bug"), FailureKind.Permanent)));
        host.Behavior.Run = (_, _) => throw new IOException("boom");
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("broken"));
        var job = await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Contains("classifier bug", job.LastError, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Context_WritesAfterTheAttemptEnded_AreRejected()
    {
        await using var host = new TestHost();
        WorkloadContext? kept = null;
        host.Behavior.Run = (context, _) =>
        {
            kept = context;
            return ValueTask.CompletedTask;
        };
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work"));
        await host.WaitForStateAsync(id, JobState.Succeeded);

        await Assert.ThrowsAsync<StaleFenceTokenException>(() => kept!.LogAsync("too late").AsTask());
        await Assert.ThrowsAsync<StaleFenceTokenException>(() => kept!.SaveCheckpointAsync("late"u8.ToArray()).AsTask());
        Assert.Empty((await host.Client.ReadLogsAsync(id)).Entries);
    }

    public sealed record Progress(int Done);

    public sealed record InstanceRun(InstanceWorkload Workload, WorkloadContext Context, ScopedProbe First, ScopedProbe Second);

    public sealed class InstanceRuns
    {
        public List<InstanceRun> Runs { get; } = [];
    }

    /// <summary>Records its own instance and the attempt's scoped services; the first attempt fails.</summary>
    public sealed class InstanceWorkload(InstanceRuns runs) : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
        {
            var first = context.Services.GetRequiredService<ScopedProbe>();
            var second = context.Services.GetRequiredService<ScopedProbe>();
            lock (runs)
            {
                runs.Runs.Add(new InstanceRun(this, context, first, second));
            }

            return context.Attempt == 1 ? throw new IOException("again") : ValueTask.CompletedTask;
        }
    }

    public sealed class ScopedProbe : IDisposable
    {
        public bool Disposed { get; private set; }

        public void Dispose() => Disposed = true;
    }
}
