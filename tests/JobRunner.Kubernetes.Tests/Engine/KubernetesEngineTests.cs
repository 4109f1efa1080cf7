using System.Text.Json.Nodes;
using Microsoft.Extensions.DependencyInjection;
using NSubstitute;
using JobRunner.Kubernetes.Testing;
using JobRunner.Kubernetes.Tests.Support;
using JobRunner.Testing;

namespace JobRunner.Kubernetes.Tests.Engine;

public sealed class KubernetesEngineTests
{
    [Fact]
    public async Task Execute_Success_CreatesOneJobStreamsLogsAndReportsExitCode()
    {
        await using var test = await K8sTest.StartAsync(static _ => FakePodScript.Succeed("line 1", "line 2"));
        var context = new TestContext();

        await test.Start(context).WaitAsync(K8sTest.Limit);

        Assert.Equal(0, context.ExitCode);
        Assert.Equal(["line 1", "line 2"], context.Output);
        Assert.Equal(1, test.Posts);
        var name = $"jr-{context.JobId}-1";
        var job = test.Server.GetObject("jobs", "jobs", name)!;
        var spec = job["spec"]!;
        Assert.Equal(0, spec["backoffLimit"]!.GetValue<int>());
        Assert.Equal(3600, spec["ttlSecondsAfterFinished"]!.GetValue<int>());
        var container = spec["template"]!["spec"]!["containers"]![0]!;
        Assert.Equal("busybox:1.36", container["image"]!.GetValue<string>());
        Assert.Equal("500m", container["resources"]!["requests"]!["cpu"]!.GetValue<string>());
        Assert.Equal("512Mi", container["resources"]!["limits"]!["memory"]!.GetValue<string>());
        Assert.Equal("Never", spec["template"]!["spec"]!["restartPolicy"]!.GetValue<string>());
        Assert.Equal("on-demand", job["metadata"]!["labels"]!["jobrunner.io/lifecycle"]!.GetValue<string>());
        Assert.Contains(container["env"]!.AsArray(), e => e!["name"]!.GetValue<string>() == "GREETING" && e["value"]!.GetValue<string>() == "hi");
        Assert.Contains(container["env"]!.AsArray(), e => e!["name"]!.GetValue<string>() == "JOBRUNNER_JOB_ID" && e["value"]!.GetValue<string>() == context.JobId.ToString());

        // The name is checkpointed for takeover.
        Assert.Equal((name, "jobs"), Kubernetes.Engine.KubernetesEngine.ReadCheckpoint(context.SavedCheckpoint));
    }

    [Fact]
    public async Task Execute_PlacementAndTimeout_AreMapped()
    {
        await using var test = await K8sTest.StartAsync();
        var spec = K8sTest.Spec() with
        {
            NodeSelector = new Dictionary<string, string> { ["pool"] = "batch" },
            Tolerations = [new Toleration("spot", TolerationOperator.Exists, Effect: "NoSchedule")],
            Lifecycle = Lifecycle.Spot,
            Timeout = TimeSpan.FromSeconds(90.5),
            Resources = new ContainerResources { CpuMillicores = 2000, MemoryMb = 4096, EphemeralStorageMb = 1000, Gpus = 1 },
        };
        var context = new TestContext();

        await test.Start(context, spec).WaitAsync(K8sTest.Limit);

        var job = test.Server.GetObject("jobs", "jobs", $"jr-{context.JobId}-1")!;
        Assert.Equal(91, job["spec"]!["activeDeadlineSeconds"]!.GetValue<long>());
        var pod = job["spec"]!["template"]!["spec"]!;
        Assert.Equal("batch", pod["nodeSelector"]!["pool"]!.GetValue<string>());
        Assert.Equal("Exists", pod["tolerations"]![0]!["operator"]!.GetValue<string>());
        Assert.Equal("spot", job["metadata"]!["labels"]!["jobrunner.io/lifecycle"]!.GetValue<string>());
        var limits = pod["containers"]![0]!["resources"]!["limits"]!;
        Assert.Equal("1", limits["nvidia.com/gpu"]!.GetValue<string>());
        Assert.Equal("1000Mi", limits["ephemeral-storage"]!.GetValue<string>());
    }

    [Fact]
    public async Task Execute_NonZeroExit_FailsPermanentlyWithTheExitCode()
    {
        await using var test = await K8sTest.StartAsync(static _ => FakePodScript.Exit(3, "boom"));
        var context = new TestContext();

        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => test.Start(context).WaitAsync(K8sTest.Limit));

        Assert.Equal(3, error.ExitCode);
        Assert.Equal(ExitReason.NonZeroExit, error.Reason);
        Assert.False(error.IsTransient);
        Assert.Equal(3, context.ExitCode);
        Assert.Contains("boom", context.Output);
    }

    [Fact]
    public async Task Execute_TransientExitCode_IsTransient()
    {
        await using var test = await K8sTest.StartAsync(static _ => FakePodScript.Exit(75));

        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => test.Start(new TestContext(), configure: o => o.TransientExitCodes.Add(75)).WaitAsync(K8sTest.Limit));

        Assert.True(error.IsTransient);
    }

    [Fact]
    public async Task Execute_OomKilled_IsTransientOutOfMemory()
    {
        await using var test = await K8sTest.StartAsync(static _ => FakePodScript.OomKilled());

        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => test.Start(new TestContext()).WaitAsync(K8sTest.Limit));

        Assert.Equal(ExitReason.OutOfMemory, error.Reason);
        Assert.True(error.IsTransient);
        Assert.Equal(137, error.ExitCode);
        Assert.Contains("OOMKilled", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Execute_Evicted_IsTransient()
    {
        await using var test = await K8sTest.StartAsync(static _ => new FakePodScript { Evicted = true });

        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => test.Start(new TestContext()).WaitAsync(K8sTest.Limit));

        Assert.Equal(ExitReason.Evicted, error.Reason);
        Assert.True(error.IsTransient);
    }

    [Fact]
    public async Task Execute_ContainerStatusUnknown_IsTransientLikeAnEviction()
    {
        // The kubelet lost the container (its node went away): exit code 137, reason ContainerStatusUnknown.
        await using var test = await K8sTest.StartAsync(static _ => new FakePodScript { ExitCode = 137, TerminationReason = "ContainerStatusUnknown" });

        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => test.Start(new TestContext()).WaitAsync(K8sTest.Limit));

        Assert.Equal(ExitReason.Evicted, error.Reason);
        Assert.True(error.IsTransient);
        Assert.Contains("ContainerStatusUnknown", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Execute_ImagePullBackOffPastTheLimit_FailsPermanentlyAndDeletesTheJob()
    {
        await using var test = await K8sTest.StartAsync(static _ => new FakePodScript { ImagePullFails = true });
        var (time, context, run) = test.StartOnFakeClock(o => o.ImagePullBackOffLimit = TimeSpan.FromMinutes(5));

        await context.WaitForLineAsync("ImagePullBackOff");
        Assert.False(run.IsCompleted);
        time.Advance(TimeSpan.FromMinutes(5));
        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => run.WaitAsync(K8sTest.Limit));

        Assert.Equal(ExitReason.StartFailed, error.Reason);
        Assert.False(error.IsTransient);
        Assert.Contains("could not be pulled", error.Message, StringComparison.Ordinal);
        Assert.Empty(test.Server.Names("jobs", "jobs"));
        Assert.Contains(test.Server.Requests, r => r.Method == "DELETE" && r.Body.Contains("\"propagationPolicy\":\"Background\"", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("CreateContainerConfigError", false, "secret \"db-password\" not found")]
    [InlineData("CreateContainerError", false, "CreateContainerError")]
    [InlineData("RunContainerError", true, "RunContainerError")]
    [InlineData("ContainerCreating", true, "FailedMount: MountVolume.SetUp failed")]
    public async Task Execute_ContainerThatNeverStartsPastTheLimit_FailsNamingTheReason_AndDeletesTheJob(string reason, bool transient, string quoted)
    {
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { StuckWaiting = reason });
        var (time, context, run) = test.StartOnFakeClock(o => o.ContainerStartLimit = TimeSpan.FromMinutes(15));

        await context.WaitForLineAsync($"waiting: {reason}");
        if (reason == "ContainerCreating")
        {
            // Every pod passes through ContainerCreating: wait for the kubelet's event that says this one is stuck.
            await K8sTest.UntilAsync(() => test.Server.Names("events", "jobs").Any(static n => n.StartsWith("jr-", StringComparison.Ordinal)) && test.Server.Names("events", "jobs").Count >= 2, "The fake kubelet never reported the mount failure.");
        }

        Assert.False(run.IsCompleted);
        time.Advance(TimeSpan.FromMinutes(15));
        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => run.WaitAsync(K8sTest.Limit));

        Assert.Equal(ExitReason.StartFailed, error.Reason);
        Assert.Equal(transient, error.IsTransient);
        Assert.Contains($"did not start in 00:15:00 ({reason}", error.Message, StringComparison.Ordinal);
        Assert.Contains(quoted, error.Message, StringComparison.Ordinal);
        Assert.Empty(test.Server.Names("jobs", "jobs"));
    }

    [Theory]
    [InlineData("CrashLoopBackOff")]
    [InlineData("ImagePullBackOff")]
    [InlineData("ContainerCreating")]
    public async Task Execute_InitContainerThatNeverStartsPastTheLimit_FailsNamingIt_AndDeletesTheJob(string reason)
    {
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { InitStuckWaiting = reason });
        var (time, context, run) = test.StartOnFakeClock(o => o.ContainerStartLimit = TimeSpan.FromMinutes(15));
        await context.WaitForLineAsync("waiting: PodInitializing");
        await K8sTest.UntilAsync(() => test.Server.Names("events", "jobs").Count >= 2, "The fake kubelet never reported the init container.");

        // The limit counts from when the engine saw the init container wait, which may follow the event by a moment.
        for (var i = 0; i < 5 && !run.IsCompleted; i++)
        {
            time.Advance(TimeSpan.FromMinutes(15));
            await Task.WhenAny(run, Task.Delay(TimeSpan.FromSeconds(1), TimeProvider.System));
        }

        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => run.WaitAsync(K8sTest.Limit));
        Assert.Equal(ExitReason.StartFailed, error.Reason);
        Assert.Contains($"did not start in 00:15:00 ({reason}", error.Message, StringComparison.Ordinal);
        Assert.Contains("An init container", error.Message, StringComparison.Ordinal);
        Assert.Empty(test.Server.Names("jobs", "jobs"));
    }

    [Fact]
    public async Task Execute_ImagePullLongerThanTheStartLimit_IsWaitedFor()
    {
        // A huge image: the kubelet pulls it for longer than the limit, the container waiting in ContainerCreating.
        var pulled = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { PullUntil = pulled.Task, RunUntil = new TaskCompletionSource().Task });
        using var cancel = new CancellationTokenSource();
        var (time, context, run) = test.StartOnFakeClock(o => o.ContainerStartLimit = TimeSpan.FromMinutes(15), cancellationToken: cancel.Token);

        await context.WaitForLineAsync("waiting: ContainerCreating");
        await test.UntilPullStartedAsync();
        time.Advance(TimeSpan.FromMinutes(15));
        await context.WaitForLineAsync("the image is still being pulled");
        pulled.SetResult();
        await context.WaitForLineAsync(": running");

        Assert.False(run.IsCompleted);
        Assert.DoesNotContain(test.Server.Requests, static r => r.Method == "DELETE");
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(K8sTest.Limit));
    }

    [Theory]
    [InlineData(15, 30, 2)] // looked at when the start limit is reached, then again at the pull limit
    [InlineData(15, 5, 1)] // a pull limit shorter than the start limit is looked at first
    public async Task Execute_ImagePullThatNeverEnds_FailsTransientlyAtTheImagePullLimit_NamingImageContainerAndOption(int startMinutes, int pullMinutes, int steps)
    {
        // A registry that never answers: the kubelet's Pulling event has nothing after it, for good.
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { PullUntil = new TaskCompletionSource().Task });
        var (time, context, run) = test.StartOnFakeClock(o => (o.ContainerStartLimit, o.ImagePullLimit) = (TimeSpan.FromMinutes(startMinutes), TimeSpan.FromMinutes(pullMinutes)), K8sTest.Spec("registry.example/huge:1"));

        await context.WaitForLineAsync("waiting: ContainerCreating");
        await test.UntilPullStartedAsync();
        if (steps == 2)
        {
            time.Advance(TimeSpan.FromMinutes(startMinutes));
            await context.WaitForLineAsync("the image is still being pulled");
            Assert.False(run.IsCompleted);
        }

        time.Advance(TimeSpan.FromMinutes(steps == 2 ? pullMinutes - startMinutes : pullMinutes));
        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => run.WaitAsync(K8sTest.Limit));

        Assert.Equal(ExitReason.StartFailed, error.Reason);
        Assert.True(error.IsTransient);
        Assert.Contains($"the image 'registry.example/huge:1' of container 'main' was still being pulled after {TimeSpan.FromMinutes(pullMinutes)}", error.Message, StringComparison.Ordinal);
        Assert.Contains("raise KubernetesEngineOptions.ImagePullLimit", error.Message, StringComparison.Ordinal);
        Assert.Empty(test.Server.Names("jobs", "jobs"));
    }

    [Fact]
    public async Task Execute_PodEventsUnreadableAtTheStartLimit_LooksAgainLater_AndWaitsForThePull()
    {
        var pulled = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { PullUntil = pulled.Task, RunUntil = new TaskCompletionSource().Task });
        using var cancel = new CancellationTokenSource();
        var (time, context, run) = test.StartOnFakeClock(o => o.ContainerStartLimit = TimeSpan.FromMinutes(15), cancellationToken: cancel.Token);

        await context.WaitForLineAsync("waiting: ContainerCreating");
        await test.UntilPullStartedAsync();
        // A failure that may pass (503; every retry of the one read, at once): looked at again.
        test.Server.InjectFault(503, count: 6, retryAfterSeconds: 0, match: static r => r.Path.EndsWith("/events", StringComparison.Ordinal));
        time.Advance(TimeSpan.FromMinutes(15));
        await context.WaitForLineAsync("its events could not be read");
        Assert.False(run.IsCompleted);

        // Less than the request time limit (60 s on the same clock): the watches reopened after the jump must not time out.
        time.Advance(TimeSpan.FromSeconds(30));
        await context.WaitForLineAsync("the image is still being pulled");
        pulled.SetResult();
        await context.WaitForLineAsync(": running");

        Assert.False(run.IsCompleted);
        Assert.DoesNotContain(test.Server.Requests, static r => r.Method == "DELETE");
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(K8sTest.Limit));
    }

    [Fact]
    public async Task Execute_PodEventsUnreadableUntilTheImagePullLimit_FailsTransiently()
    {
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { PullUntil = new TaskCompletionSource().Task });
        var (time, context, run) = test.StartOnFakeClock(o => (o.ContainerStartLimit, o.ImagePullLimit) = (TimeSpan.FromMinutes(15), TimeSpan.FromMinutes(30)));

        await context.WaitForLineAsync("waiting: ContainerCreating");
        await test.UntilPullStartedAsync();
        test.Server.InjectFault(503, count: 1000, retryAfterSeconds: 0, match: static r => r.Path.EndsWith("/events", StringComparison.Ordinal));
        time.Advance(TimeSpan.FromMinutes(15));
        await context.WaitForLineAsync("its events could not be read");
        Assert.False(run.IsCompleted);

        time.Advance(TimeSpan.FromMinutes(15));
        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => run.WaitAsync(K8sTest.Limit));

        Assert.Equal(ExitReason.StartFailed, error.Reason);
        Assert.True(error.IsTransient);
        Assert.Contains("container 'main' did not start in 00:30:00 (ContainerCreating), and the pod's events", error.Message, StringComparison.Ordinal);
        Assert.Contains("raise KubernetesEngineOptions.ImagePullLimit", error.Message, StringComparison.Ordinal);
        test.Server.ClearFaults();
        Assert.Empty(test.Server.Names("jobs", "jobs"));
    }

    [Fact]
    public async Task Execute_PodEventsRefusedAtTheStartLimit_FailsAtTheStartLimit_WithoutLookingAgain()
    {
        // A refusal (the engine's role may not list events) does not pass: the start limit decides, as without events.
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { PullUntil = new TaskCompletionSource().Task });
        var (time, context, run) = test.StartOnFakeClock(o => (o.ContainerStartLimit, o.ImagePullLimit) = (TimeSpan.FromMinutes(15), TimeSpan.FromMinutes(30)));

        await context.WaitForLineAsync("waiting: ContainerCreating");
        await test.UntilPullStartedAsync();
        test.Server.InjectFault(403, count: 1000, match: static r => r.Path.EndsWith("/events", StringComparison.Ordinal));
        time.Advance(TimeSpan.FromMinutes(15));
        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => run.WaitAsync(K8sTest.Limit));

        Assert.Equal(ExitReason.StartFailed, error.Reason);
        Assert.True(error.IsTransient);
        Assert.Contains("the container did not start in 00:15:00 (ContainerCreating", error.Message, StringComparison.Ordinal);
        Assert.Contains("the pod's events could not be read", error.Message, StringComparison.Ordinal);
        Assert.Equal(1, test.Server.CountRequests(static r => r.Path.EndsWith("/events", StringComparison.Ordinal)));
        Assert.Single(context.Lines, static l => l.Message.Contains("its events cannot be read", StringComparison.Ordinal));
        test.Server.ClearFaults();
        Assert.Empty(test.Server.Names("jobs", "jobs"));
    }

    [Fact]
    public async Task Execute_ImagePullOutlivingItsEvents_IsStillWaitedFor()
    {
        // An ImagePullLimit longer than the events' time to live: the Pulling event is deleted while the pull goes on.
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { PullUntil = new TaskCompletionSource().Task });
        using var cancel = new CancellationTokenSource();
        var (time, context, run) = test.StartOnFakeClock(o => (o.ContainerStartLimit, o.ImagePullLimit) = (TimeSpan.FromMinutes(15), TimeSpan.FromHours(3)), K8sTest.Spec("registry.example/huge:1"), cancellationToken: cancel.Token);

        await context.WaitForLineAsync("waiting: ContainerCreating");
        await test.UntilPullStartedAsync();
        time.Advance(TimeSpan.FromMinutes(15));
        await context.WaitForLineAsync("the image is still being pulled after 00:15:00");
        test.Server.ExpireEvents("jobs");
        Assert.Empty(test.Server.Names("events", "jobs"));

        time.Advance(TimeSpan.FromMinutes(15));
        await context.WaitForLineAsync("the image is still being pulled after 00:30:00");

        Assert.False(run.IsCompleted);
        Assert.DoesNotContain(test.Server.Requests, static r => r.Method == "DELETE");
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(K8sTest.Limit));
    }

    [Fact]
    public async Task Execute_ImagePullOutlivingItsEvents_FailsAtTheImagePullLimit_NamingTheImage()
    {
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { PullUntil = new TaskCompletionSource().Task });
        var (time, context, run) = test.StartOnFakeClock(o => (o.ContainerStartLimit, o.ImagePullLimit) = (TimeSpan.FromMinutes(15), TimeSpan.FromMinutes(30)), K8sTest.Spec("registry.example/huge:1"));

        await context.WaitForLineAsync("waiting: ContainerCreating");
        await test.UntilPullStartedAsync();
        time.Advance(TimeSpan.FromMinutes(15));
        await context.WaitForLineAsync("the image is still being pulled after 00:15:00");
        test.Server.ExpireEvents("jobs");
        time.Advance(TimeSpan.FromMinutes(15));
        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => run.WaitAsync(K8sTest.Limit));

        Assert.True(error.IsTransient);
        Assert.Contains("the image 'registry.example/huge:1' of container 'main' was still being pulled after 00:30:00", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Execute_InitContainersRunningLongerThanTheStartLimit_AreNotCounted()
    {
        // While init containers run, the container waits in PodInitializing and the pod is not Initialized yet.
        var initialized = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { InitializeUntil = initialized.Task, RunUntil = new TaskCompletionSource().Task });
        using var cancel = new CancellationTokenSource();
        var (time, context, run) = test.StartOnFakeClock(o => o.ContainerStartLimit = TimeSpan.FromMinutes(15), cancellationToken: cancel.Token);

        await context.WaitForLineAsync("waiting: PodInitializing");
        time.Advance(TimeSpan.FromMinutes(15));
        initialized.SetResult();
        await context.WaitForLineAsync(": running");

        Assert.False(run.IsCompleted);
        Assert.DoesNotContain(test.Server.Requests, static r => r.Method == "DELETE");
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(K8sTest.Limit));
    }

    [Fact]
    public async Task Execute_JobSuspendedByAQueue_IsNotFailedAsCreatingNoPod_AndRunsOnceAdmitted()
    {
        await using var test = await K8sTest.StartAsync(static _ => new FakePodScript { Suspended = true, Logs = ["admitted"] });
        var (time, context, run) = test.StartOnFakeClock(o => o.UnschedulableLimit = TimeSpan.FromMinutes(4));

        // Held back by the queue for longer than the no-pod limit, then admitted. (Less than the 6 minutes after which a
        // silent watch counts as dead: a watch reopened after one that delivered nothing would wait on the fake clock.)
        await context.WaitForLineAsync("is suspended");
        time.Advance(TimeSpan.FromMinutes(5));
        test.Server.ResumeJob("jobs", $"jr-{context.JobId}-1");

        // From here on every step is driven by the watch (the pod runs, its log ends, the Job completes): the fake clock
        // stays where it is.
        await run.WaitAsync(K8sTest.Limit);

        Assert.Equal(0, context.ExitCode);
        Assert.Equal(["admitted"], context.Output);
        Assert.DoesNotContain(test.Server.Requests, static r => r.Method == "DELETE");
    }

    [Fact]
    public async Task Execute_InvalidImageName_FailsPermanentlyAtOnce()
    {
        await using var test = await K8sTest.StartAsync(static _ => new FakePodScript { InvalidImageName = true });

        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => test.Start(new TestContext()).WaitAsync(K8sTest.Limit));

        Assert.Equal(ExitReason.StartFailed, error.Reason);
        Assert.False(error.IsTransient);
    }

    [Fact]
    public async Task Execute_UnschedulablePastTheLimit_FailsTransiently()
    {
        await using var test = await K8sTest.StartAsync(static _ => new FakePodScript { Unschedulable = true });
        var (time, context, run) = test.StartOnFakeClock(o => o.UnschedulableLimit = TimeSpan.FromMinutes(10));

        await context.WaitForLineAsync("Unschedulable");
        time.Advance(TimeSpan.FromMinutes(10));
        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => run.WaitAsync(K8sTest.Limit));

        Assert.Equal(ExitReason.Unschedulable, error.Reason);
        Assert.True(error.IsTransient);
        Assert.Contains("Insufficient memory", error.Message, StringComparison.Ordinal);
        Assert.Empty(test.Server.Names("jobs", "jobs"));
    }

    [Fact]
    public async Task Execute_JobThatCreatesNoPod_FailsTransientlyPastTheLimit_WithTheJobsEvent_AndIsDeleted()
    {
        await using var test = await K8sTest.StartAsync(static _ => new FakePodScript { PodCreationRefused = "violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false" });
        var (time, context, run) = test.StartOnFakeClock(o => o.UnschedulableLimit = TimeSpan.FromMinutes(10));

        // The Job exists and its controller has said why it makes no pod. The limit counts from when the attempt first
        // sees the Job without a pod: move the clock (in steps shorter than a request's timeout) until it gives up.
        await K8sTest.UntilAsync(() => test.Server.Names("events", "jobs").Count > 0, "The fake Job controller never refused the pod.");

        for (var i = 0; i < 300 && !run.IsCompleted; i++)
        {
            time.Advance(TimeSpan.FromSeconds(20));
            await Task.WhenAny(run, Task.Delay(TimeSpan.FromMilliseconds(20), TimeProvider.System));
        }

        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => run.WaitAsync(K8sTest.Limit));
        Assert.Equal(ExitReason.StartFailed, error.Reason);
        Assert.True(error.IsTransient);
        Assert.Contains("created no pod in 00:10:00: FailedCreate: Error creating: pods", error.Message, StringComparison.Ordinal);
        Assert.Contains("violates PodSecurity", error.Message, StringComparison.Ordinal);
        Assert.Empty(test.Server.Names("jobs", "jobs"));
    }

    [Fact]
    public async Task Execute_DeadlineExceeded_ThrowsJobTimeoutException()
    {
        var never = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = never.Task });
        var context = new TestContext();
        var spec = K8sTest.Spec() with { Timeout = TimeSpan.FromMinutes(2) };
        var run = test.Start(context, spec);

        await context.WaitForLineAsync(": running");
        test.Server.ExceedDeadline("jobs", $"jr-{context.JobId}-1");
        var error = await Assert.ThrowsAsync<JobTimeoutException>(() => run.WaitAsync(K8sTest.Limit));

        Assert.Equal(TimeSpan.FromMinutes(2), error.Timeout);
    }

    [Fact]
    public async Task Execute_Cancelled_DeletesTheJobInTheBackground()
    {
        var never = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = never.Task });
        var context = new TestContext();
        using var cancel = new CancellationTokenSource();
        var run = test.Start(context, cancellationToken: cancel.Token);

        await context.WaitForLineAsync(": running");
        await cancel.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(K8sTest.Limit));
        var delete = Assert.Single(test.Server.Requests, r => r.Method == "DELETE");
        Assert.Equal($"/apis/batch/v1/namespaces/jobs/jobs/jr-{context.JobId}-1", delete.Path);
        Assert.Equal("Background", JsonNode.Parse(delete.Body)!["propagationPolicy"]!.GetValue<string>());
        Assert.Empty(test.Server.Names("jobs", "jobs"));
        Assert.Empty(test.Server.Names("pods", "jobs"));
    }

    [Fact]
    public async Task Execute_CancelledAfterTheHostWasDisposed_IsCancelled_NotAnObjectDisposedException()
    {
        // The host stops (its connections disposed) while an attempt is still being cancelled: the Job's delete cannot go
        // out; the attempt ends as cancelled, as when the server cannot be reached.
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = new TaskCompletionSource().Task });
        var context = new TestContext();
        using var cancel = new CancellationTokenSource();
        var host = test.Host();
        var run = K8sTest.StartOn(host, context, cancellationToken: cancel.Token);
        await context.WaitForLineAsync(": running");

        await host.DisposeAsync().AsTask().WaitAsync(K8sTest.Limit);
        await cancel.CancelAsync();

        var error = await Assert.ThrowsAnyAsync<Exception>(() => run.WaitAsync(K8sTest.Limit));
        Assert.IsAssignableFrom<OperationCanceledException>(error);
        Assert.DoesNotContain(test.Server.Requests, static r => r.Method == "DELETE");
    }

    [Fact]
    public async Task Execute_StoppedAfterItsLeaseWasLost_LeavesTheJobToTheNextOwner_WhichReattaches()
    {
        var release = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = release.Task, Logs = ["from the pod"] });
        var jobId = JobId.New(TimeProvider.System);

        // Attempt 1's worker could not renew its lease: the job was taken back and attempt 2 re-attached elsewhere.
        var stale = new TestContext(jobId, attempt: 1);
        using var stop = new CancellationTokenSource();
        var staleRun = test.Start(stale, cancellationToken: stop.Token);
        await stale.WaitForLineAsync(": running");
        var next = new TestContext(jobId, attempt: 2, checkpoint: stale.SavedCheckpoint);
        var nextRun = test.Start(next);
        await next.WaitForLineAsync("Re-attached");

        // Then the first worker hears that its lease is lost, and stops its attempt.
        stale.LoseLease();
        await stop.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => staleRun.WaitAsync(K8sTest.Limit));

        Assert.DoesNotContain(test.Server.Requests, r => r.Method == "DELETE");
        release.SetResult();
        await nextRun.WaitAsync(K8sTest.Limit);
        Assert.Equal(0, next.ExitCode);
        Assert.Equal(1, test.Posts);
    }

    [Fact]
    public async Task Execute_ListOfPodsForbidden_FailsTheAttemptWithTheApiError_AndALaterAttemptRunsOnceAllowed()
    {
        await using var test = await K8sTest.StartAsync();

        // The identity may not list pods (a missing RBAC rule), for the first try only.
        test.Server.InjectFault(403, count: 1, match: static r => r.Method == "GET" && r.Path.EndsWith("/pods", StringComparison.Ordinal) && !r.IsWatch);
        var refused = await Assert.ThrowsAsync<KubernetesApiException>(() => test.Start(new TestContext()).WaitAsync(K8sTest.Limit));

        Assert.Equal(403, refused.StatusCode);
        Assert.Equal(0, test.Posts);

        // The watch kept trying; with the permission in place the next attempt runs.
        var context = new TestContext();
        await test.Start(context).WaitAsync(K8sTest.Limit);
        Assert.Equal(0, context.ExitCode);
    }

    [Fact]
    public async Task Execute_ServerUnreachable_FailsTheAttemptTransiently_NamingTheServer()
    {
        // Nothing listens on the port: every connection is refused. The back-off pauses pass at once, the clock moving
        // on by them, until the server has been unreachable for minutes.
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        var options = new KubernetesEngineOptions { Server = new Uri($"http://127.0.0.1:{port}"), Namespace = "jobs" };
        await using var host = new Kubernetes.Engine.KubernetesEngineHost(Microsoft.Extensions.Options.Options.Create(options), new JumpingTime());

        var error = await Assert.ThrowsAsync<KubernetesApiException>(() => K8sTest.StartOn(host, new TestContext()).WaitAsync(K8sTest.Limit));

        Assert.True(error.IsTransient);
        Assert.Contains("cannot be reached", error.Message, StringComparison.Ordinal);
        Assert.Contains($"127.0.0.1:{port}", error.Message, StringComparison.Ordinal);
        Assert.IsType<HttpRequestException>(error.InnerException);
    }

    [Fact]
    public async Task Execute_ListsAnswer504Repeatedly_FailsTheAttempt_AndALaterAttemptRunsOnceTheServerAnswers()
    {
        await using var test = await K8sTest.StartAsync();
        test.Server.InjectFault(504, count: 1000, match: static r => r.Method == "GET" && !r.IsWatch);
        var host = test.Host(new JumpingTime());

        var error = await Assert.ThrowsAsync<KubernetesApiException>(() => K8sTest.StartOn(host, new TestContext()).WaitAsync(K8sTest.Limit));
        Assert.Equal(504, error.StatusCode);
        Assert.Equal(0, test.Posts);

        // The watch kept trying; once the server answers, the next attempt runs.
        test.Server.ClearFaults();
        var context = new TestContext();
        await K8sTest.StartOn(host, context).WaitAsync(K8sTest.Limit);
        Assert.Equal(0, context.ExitCode);
    }

    [Fact]
    public async Task Execute_ListsFailForLessThanTheUnreachableLimit_TheAttemptWaitsAndRuns()
    {
        // An API server restart: three lists of pods in a row fail (each after the client's retries), some 20 s in all.
        await using var test = await K8sTest.StartAsync();
        test.Server.InjectFault(504, count: 18, match: static r => r.Method == "GET" && r.Path.EndsWith("/pods", StringComparison.Ordinal) && !r.IsWatch);
        var context = new TestContext();

        await K8sTest.StartOn(test.Host(new JumpingTime()), context).WaitAsync(K8sTest.Limit);

        Assert.Equal(0, context.ExitCode);
        Assert.True(test.Server.CountRequests(static r => r.Method == "GET" && r.Path.EndsWith("/pods", StringComparison.Ordinal) && !r.IsWatch) > 18);
    }

    [Fact]
    public async Task Execute_JobDeletedAsSoonAsItFinished_IsJudgedByItsLastState()
    {
        // TtlAfterFinished = 0: the TTL controller deletes each Job (and its pod) the moment it finishes, so the watch
        // brings the Job's last state and its deletion back to back.
        await using var test = await K8sTest.StartAsync();
        for (var i = 0; i < 3; i++)
        {
            var fails = i == 1;
            test.Server.PodBehavior = _ => fails ? FakePodScript.Exit(3, "boom") : FakePodScript.Succeed("done");
            var context = new TestContext();
            var run = test.Start(context, configure: static o => o.TtlAfterFinished = TimeSpan.Zero);

            if (fails)
            {
                var error = await Assert.ThrowsAsync<WorkloadExitException>(() => run.WaitAsync(K8sTest.Limit));
                Assert.Equal(3, error.ExitCode);
            }
            else
            {
                await run.WaitAsync(K8sTest.Limit);
                Assert.Equal(0, context.ExitCode);
            }
        }
    }

    [Fact]
    public async Task Execute_CancelledWhileTheCreateWaitsToBeRetried_DeletesTheJobByItsName()
    {
        // The create is answered 429 (the server may also have created it and failed to answer): the attempt is
        // cancelled while it waits to try again. Nobody adopts a cancelled attempt's Job, so it is deleted by its name.
        await using var test = await K8sTest.StartAsync();
        test.Server.InjectFault(429, count: 1, retryAfterSeconds: 60, match: static r => r.Method == "POST");
        var context = new TestContext();
        using var cancel = new CancellationTokenSource();
        var run = test.Start(context, cancellationToken: cancel.Token);
        await K8sTest.UntilAsync(() => test.Server.CountRequests(static r => r.Method == "POST") > 0, "The create was never sent.");

        await cancel.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(K8sTest.Limit));
        var delete = Assert.Single(test.Server.Requests, static r => r.Method == "DELETE");
        Assert.Equal($"/apis/batch/v1/namespaces/jobs/jobs/jr-{context.JobId}-1", delete.Path);
        Assert.Equal(1, test.Posts);
    }

    [Fact]
    public async Task Execute_SecondSubmitOfTheSameAttempt_AdoptsTheJobOn409()
    {
        var release = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = release.Task, Logs = ["working"] });
        var jobId = JobId.New(TimeProvider.System);

        // The first host is stopped gracefully (CheckpointRequested): it leaves the Job running.
        var first = new TestContext(jobId);
        using var stop = new CancellationTokenSource();
        var firstRun = test.Start(first, cancellationToken: stop.Token);
        await first.WaitForLineAsync(": running");
        first.RequestCheckpoint();
        await stop.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => firstRun.WaitAsync(K8sTest.Limit));
        Assert.Single(test.Server.Names("jobs", "jobs"));

        // A second submit of the same attempt, without the checkpoint, gets 409 AlreadyExists and adopts the Job.
        var second = new TestContext(jobId);
        var secondRun = test.Start(second);
        await second.WaitForLineAsync("adopted");
        release.SetResult();
        await secondRun.WaitAsync(K8sTest.Limit);

        Assert.Equal(2, test.Posts);
        Assert.Single(test.Server.Names("jobs", "jobs"));
        Assert.Single(test.Server.Names("pods", "jobs"));
        Assert.Contains("working", second.Output);
    }

    [Fact]
    public async Task Execute_TakeoverAfterHostCrash_ReattachesByCheckpointWithoutSubmittingAgain()
    {
        var release = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = release.Task, Logs = ["from the pod"] });
        var jobId = JobId.New(TimeProvider.System);

        // Host A runs attempt 1, then crashes: its engine host and watch go away, the Job stays.
        var crashed = test.Host();
        var a = new TestContext(jobId, attempt: 1);
        using var abandon = new CancellationTokenSource();
        var aRun = K8sTest.StartOn(crashed, a, cancellationToken: abandon.Token);
        await a.WaitForLineAsync(": running");
        a.RequestCheckpoint();
        await abandon.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => aRun.WaitAsync(K8sTest.Limit));
        await crashed.DisposeAsync();

        // Host B takes the lease over: attempt 2 starts from attempt 1's checkpoint and re-attaches.
        var b = new TestContext(jobId, attempt: 2, checkpoint: a.SavedCheckpoint);
        var bRun = test.Start(b);
        await b.WaitForLineAsync("Re-attached");
        release.SetResult();
        await bRun.WaitAsync(K8sTest.Limit);

        Assert.Equal(1, test.Posts);
        Assert.Equal(0, b.ExitCode);
        Assert.Equal([$"jr-{jobId}-1"], test.Server.Names("jobs", "jobs"));
        Assert.Contains("from the pod", b.Output);
    }

    [Fact]
    public async Task Execute_TakeoverAfterHostCrash_StreamsOnFromTheLinesEarlierAttemptsStored()
    {
        var release = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { Logs = ["one", "two"], RunUntil = release.Task, FinalLogs = ["three"] });
        var jobId = JobId.New(TimeProvider.System);
        var logs = new ServiceCollection().AddJobRunner(static _ => { }).BuildServiceProvider().GetRequiredService<ILogStore>();

        // Host A stores the pod's first lines, then crashes.
        var crashed = test.Host();
        var a = new TestContext(jobId, attempt: 1, logs: logs);
        using var abandon = new CancellationTokenSource();
        var aRun = K8sTest.StartOn(crashed, a, cancellationToken: abandon.Token);
        await a.WaitForLineAsync("two", LogStream.Output);
        a.RequestCheckpoint();
        await abandon.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => aRun.WaitAsync(K8sTest.Limit));
        await crashed.DisposeAsync();

        // Host B re-attaches: the stream goes on after them.
        var b = new TestContext(jobId, attempt: 2, checkpoint: a.SavedCheckpoint, logs: logs);
        var bRun = test.Start(b);
        await b.WaitForLineAsync("Re-attached");
        release.SetResult();
        await bRun.WaitAsync(K8sTest.Limit);

        Assert.Equal(["three"], b.Output);
        var stored = await logs.ReadAsync(jobId, new LogQuery(), default);
        Assert.Equal([("one", 1), ("two", 1), ("three", 2)], stored.Entries.Where(e => e.Stream == LogStream.Output).Select(e => (e.Message, e.Attempt)));
    }

    [Fact]
    public async Task Sweep_DeletesAJobLeftRunningByAGracefulStop_OnceTheStoreHasItsJobFinished_AndNoOther()
    {
        await using var test = await K8sTest.StartAsync(static _ => new FakePodScript { RunUntil = new TaskCompletionSource().Task });
        var store = Substitute.For<IJobStore>();
        var host = test.Host(store: store);

        // Three jobs whose workers stopped gracefully, each leaving its Job running for the next owner.
        var stopped = new List<TestContext>();
        foreach (var state in new[] { JobState.Cancelled, JobState.Queued, (JobState?)null })
        {
            var context = new TestContext();
            using var stop = new CancellationTokenSource();
            var run = K8sTest.StartOn(host, context, cancellationToken: stop.Token);
            await context.WaitForLineAsync(": running");
            context.RequestCheckpoint();
            await stop.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(K8sTest.Limit));
            if (state is { } known)
            {
                var now = TimeProvider.System.GetUtcNow();
                store.GetAsync(context.JobId, Arg.Any<CancellationToken>()).Returns(new JobRecord { Id = context.JobId, Request = context.Request, State = known, CreatedAt = now, UpdatedAt = now });
            }

            stopped.Add(context);
        }

        Assert.Equal(3, test.Server.Names("jobs", "jobs").Count);

        // The cancelled job's Job goes; the queued job's waits for its next owner; a job the store does not know is not ours.
        Assert.Equal(1, await host.SweepOnceAsync(DateTimeOffset.MaxValue, default));
        await K8sTest.UntilAsync(() => test.Server.Names("jobs", "jobs").Count == 2, "the Job was not deleted");
        Assert.Equal(new[] { $"jr-{stopped[1].JobId}-1", $"jr-{stopped[2].JobId}-1" }.Order(), test.Server.Names("jobs", "jobs").Order());

        // Only Jobs older than the interval are looked at.
        Assert.Equal(0, await host.SweepOnceAsync(DateTimeOffset.MinValue, default));

        // A host that never ran a Kubernetes job looks too, every interval from its start.
        store.GetAsync(stopped[1].JobId, Arg.Any<CancellationToken>()).Returns(new JobRecord { Id = stopped[1].JobId, Request = stopped[1].Request, State = JobState.Cancelled, CreatedAt = DateTimeOffset.UnixEpoch, UpdatedAt = DateTimeOffset.UnixEpoch });
        var time = new FakeTimeProvider(TimeProvider.System.GetUtcNow().AddHours(1));
        var sweeper = test.Host(time, store: store);
        sweeper.StartSweeping();
        time.Advance(TimeSpan.FromMinutes(1));
        await K8sTest.UntilAsync(() => test.Server.Names("jobs", "jobs").Count == 1, "the sweeping host did not delete the Job");
        Assert.Equal([$"jr-{stopped[2].JobId}-1"], test.Server.Names("jobs", "jobs"));
    }

    [Fact]
    public async Task Execute_RetryAfterAFailedAttempt_SubmitsANewJob()
    {
        var calls = 0;
        await using var test = await K8sTest.StartAsync(_ => Interlocked.Increment(ref calls) == 1 ? FakePodScript.OomKilled() : FakePodScript.Succeed("ok"));
        var jobId = JobId.New(TimeProvider.System);
        var first = new TestContext(jobId, attempt: 1);
        await Assert.ThrowsAsync<WorkloadExitException>(() => test.Start(first).WaitAsync(K8sTest.Limit));

        var second = new TestContext(jobId, attempt: 2, checkpoint: first.SavedCheckpoint);
        await test.Start(second).WaitAsync(K8sTest.Limit);

        Assert.Equal(2, test.Posts);
        Assert.Equal([$"jr-{jobId}-1", $"jr-{jobId}-2"], test.Server.Names("jobs", "jobs"));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Execute_LogsStreamWhileThePodRuns_AndAStreamResetMidRunReconnectsFromTheLastLine(bool reset)
    {
        var release = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = release.Task, Logs = ["first"] });
        var context = new TestContext();
        var run = test.Start(context);

        await context.WaitForLineAsync("first", LogStream.Output);
        if (reset)
        {
            test.Server.BreakLogStreams();
        }

        test.Server.WriteLog("jobs", $"jr-{context.JobId}-1", "second");
        await context.WaitForLineAsync("second", LogStream.Output);
        Assert.False(run.IsCompleted);
        release.SetResult();
        await run.WaitAsync(K8sTest.Limit);

        // Nothing lost or repeated; a reset costs one more connection.
        Assert.Equal(["first", "second"], context.Output);
        Assert.Equal(reset ? 2 : 1, test.Server.CountRequests(static r => r.Path.EndsWith("/log", StringComparison.Ordinal)));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Execute_LogStoreFailsEveryWrite_TheAttemptStillSucceeds(bool timesOut)
    {
        // A log store that is down: every system line (the pod's phases, "Deleted ...") and every output batch fails,
        // with an error or with the store's own time limit (a cancellation, though the engine passes no token).
        await using var test = await K8sTest.StartAsync(static _ => FakePodScript.Succeed("line 1"));
        var context = new TestContext { FailWrites = _ => StoreFailure(timesOut) };

        await test.Start(context).WaitAsync(K8sTest.Limit);

        Assert.Equal(0, context.ExitCode);
        Assert.DoesNotContain(test.Server.Requests, static r => r.Method == "DELETE");
    }

    private static Exception StoreFailure(bool timesOut)
        => timesOut ? new TaskCanceledException("The request was canceled due to the configured HttpClient.Timeout of 100 seconds elapsing.", new TimeoutException()) : new InvalidOperationException("the log store is down");

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Execute_LogStoreRefusesABatchOfOutput_LaterLinesAreStillStreamed(bool timesOut)
    {
        var release = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = release.Task, Logs = ["lost"] });
        var failed = 0;
        var context = new TestContext
        {
            FailWrites = lines => lines.Any(static l => l.Message == "lost") && Interlocked.Increment(ref failed) == 1 ? StoreFailure(timesOut) : null,
        };
        var run = test.Start(context);

        await K8sTest.UntilAsync(() => Volatile.Read(ref failed) > 0, "The first output line was never written.");
        test.Server.WriteLog("jobs", $"jr-{context.JobId}-1", "kept");
        await context.WaitForLineAsync("kept", LogStream.Output);
        release.SetResult();
        await run.WaitAsync(K8sTest.Limit);

        Assert.Equal(["kept"], context.Output);
    }

    [Fact]
    public async Task Execute_LogStreamResetManyTimesWhileThePodRuns_KeepsReconnecting()
    {
        var release = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = release.Task });
        var context = new TestContext();
        var run = test.Start(context);
        await context.WaitForLineAsync(": running");

        // Each connection delivers a line, then is reset (more resets than the stream once allowed per pod).
        var expected = new List<string>();
        for (var i = 0; i < 6; i++)
        {
            var line = $"line {i}";
            expected.Add(line);
            test.Server.WriteLog("jobs", $"jr-{context.JobId}-1", line);
            await context.WaitForLineAsync(line, LogStream.Output);
            test.Server.BreakLogStreams();
        }

        test.Server.WriteLog("jobs", $"jr-{context.JobId}-1", "last");
        await context.WaitForLineAsync("last", LogStream.Output);
        release.SetResult();
        await run.WaitAsync(K8sTest.Limit);

        Assert.Equal([.. expected, "last"], context.Output);
    }

    [Fact]
    public async Task Execute_WatchExpiresMidRun_RelistsAndFinishes()
    {
        var release = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = release.Task });
        var context = new TestContext();
        var host = test.Host();
        var run = K8sTest.StartOn(host, context);
        await context.WaitForLineAsync(": running");
        var lists = test.Server.CountRequests(static r => r.Method == "GET" && !r.IsWatch && r.Path.EndsWith("/jobs", StringComparison.Ordinal));

        test.Server.ExpireWatches();
        release.SetResult();
        await run.WaitAsync(K8sTest.Limit);

        var (_, watch) = await host.ConnectAsync(CancellationToken.None);
        Assert.True(watch.Relists >= 1);
        Assert.True(test.Server.CountRequests(static r => r.Method == "GET" && !r.IsWatch && r.Path.EndsWith("/jobs", StringComparison.Ordinal)) > lists);
    }

    [Fact]
    public async Task Execute_WatchDropped_ReconnectsFromTheLastVersionAndFinishes()
    {
        var release = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = release.Task });
        var context = new TestContext();
        var host = test.Host();
        var run = K8sTest.StartOn(host, context);
        await context.WaitForLineAsync(": running");

        test.Server.DropWatches();
        release.SetResult();
        await run.WaitAsync(K8sTest.Limit);

        var (_, watch) = await host.ConnectAsync(CancellationToken.None);
        Assert.True(watch.Reconnects >= 1);
        Assert.Equal(0, watch.Relists);
    }

    [Fact]
    public async Task Execute_WatchSilentPastItsTimeout_IsOpenedAgain_AndTheAttemptFinishes()
    {
        // The server does not close the watch (as a connection whose peer vanished without a reset): after the watch's
        // timeout (at most 10 minutes) and a minute more of silence, the client gives up on it and opens another.
        var release = new TaskCompletionSource();
        await using var test = await K8sTest.StartAsync(_ => new FakePodScript { RunUntil = release.Task });
        var time = new JobRunner.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        var host = test.Host(time);
        var context = new TestContext(time: time);
        var run = K8sTest.StartOn(host, context);
        await context.WaitForLineAsync(": running");
        var watches = test.Server.CountRequests(static r => r.IsWatch);
        Assert.All(test.Server.Requests.Where(static r => r.IsWatch), static r => Assert.Matches("timeoutSeconds=(3[0-9][0-9]|[45][0-9][0-9])(&|$)", r.Query));

        time.Advance(TimeSpan.FromMinutes(11) + Kubernetes.Client.KubernetesApiClient.IdleMargin);
        var (_, watch) = await host.ConnectAsync(CancellationToken.None);
        // Both watches (Jobs and pods) are opened again.
        await K8sTest.UntilAsync(() => test.Server.CountRequests(static r => r.IsWatch) >= watches + 2, "The silent watches were not opened again.");

        release.SetResult();
        await run.WaitAsync(K8sTest.Limit);
        Assert.True(watch.Reconnects >= 2);
        Assert.Equal(0, context.ExitCode);
    }

    [Fact]
    public async Task Execute_InvalidSpec_FailsBeforeAnyApiCall()
    {
        await using var test = await K8sTest.StartAsync();
        var spec = K8sTest.Spec() with
        {
            NodeSelector = new Dictionary<string, string> { ["bad key!"] = "x" },
            Tolerations = [new Toleration("gpu", Effect: "Sometimes")],
        };

        var error = await Assert.ThrowsAsync<JobValidationException>(() => test.Start(new TestContext(), spec));

        Assert.Equal(2, error.Errors.Count);
        Assert.Contains(error.Errors, e => e.Contains("'bad key!' is not a valid label key", StringComparison.Ordinal));
        Assert.Contains(error.Errors, e => e.Contains("NoSchedule, PreferNoSchedule, NoExecute", StringComparison.Ordinal));
        Assert.Equal(0, test.Server.RequestCount);
    }

    [Fact]
    public async Task Execute_ManyConcurrentAttempts_ShareOneWatchPerResourceAndNeverPoll()
    {
        await using var test = await K8sTest.StartAsync(static r => FakePodScript.Succeed(r.JobName));
        var engine = test.Engine();
        var contexts = Enumerable.Range(0, 20).Select(_ => new TestContext()).ToList();

        await Task.WhenAll(contexts.Select(c => engine.ExecuteAsync(c, CancellationToken.None).AsTask())).WaitAsync(K8sTest.Limit);

        Assert.All(contexts, static c => Assert.Equal([$"jr-{c.JobId}-1"], c.Output));
        Assert.Equal(2, test.Server.CountRequests(static r => r.IsWatch));
        Assert.Equal(20, test.Posts);
        Assert.Equal(20, test.Server.CountRequests(static r => r.Path.EndsWith("/log", StringComparison.Ordinal)));
        Assert.Equal(2, test.Server.CountRequests(static r => r.Method == "GET" && !r.IsWatch && !r.Path.EndsWith("/log", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Host_MoreLongLivedStreamsThanThePlainRequestsConnectionLimit_DoNotStarveThePlainRequests()
    {
        // On HTTP/1.1 (the fake server is plain http) every open watch or followed log holds a connection.
        await using var test = await K8sTest.StartAsync();
        var host = test.Host();
        var (client, _) = await host.ConnectAsync(CancellationToken.None);
        using var stop = new CancellationTokenSource();
        var streams = Enumerable.Range(0, Kubernetes.Connection.KubernetesConnection.RequestConnections + 6)
            .Select(_ => Task.Run(async () =>
            {
                await foreach (var e in client.WatchAsync(Kubernetes.Client.KubernetesApiClient.JobsPath("jobs"), null, null, stop.Token))
                {
                }
            }))
            .ToList();

        await K8sTest.UntilAsync(() => test.Server.OpenWatches >= streams.Count, "Not every stream got a connection.");
        var jobs = await client.ListJobsAsync("jobs", null, CancellationToken.None).WaitAsync(K8sTest.Limit);

        Assert.Empty(jobs.Items);
        await stop.CancelAsync();
        await Task.WhenAll(streams).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing | ConfigureAwaitOptions.ContinueOnCapturedContext);
    }

    [Fact]
    public async Task Execute_CreateThrottled_WaitsRetryAfterThenSubmitsOnce()
    {
        await using var test = await K8sTest.StartAsync();
        test.Server.InjectFault(429, count: 1, retryAfterSeconds: 2, match: static r => r.Method == "POST");
        var time = new TimerSignal();
        var context = new TestContext(time: time);
        var run = test.Start(context, time: time);

        await time.WaitForTimerAsync(TimeSpan.FromSeconds(2));
        time.Fake.Advance(TimeSpan.FromSeconds(2));
        await run.WaitAsync(K8sTest.Limit);

        Assert.Equal(2, test.Posts);
        Assert.Single(test.Server.Names("jobs", "jobs"));
    }

    [Fact]
    public async Task FakeServer_ActiveDeadlineOnItsClock_FailsTheJobWithDeadlineExceeded()
    {
        var serverTime = new FakeTimeProvider();
        await using var server = await FakeKubernetesServer.StartAsync(serverTime);
        var never = new TaskCompletionSource();
        server.PodBehavior = _ => new FakePodScript { RunUntil = never.Task };
        var host = new Kubernetes.Engine.KubernetesEngineHost(Microsoft.Extensions.Options.Options.Create(new KubernetesEngineOptions { Server = server.BaseAddress }), TimeProvider.System);
        await using var _ = host;
        var context = new TestContext();
        var run = K8sTest.StartOn(host, context, K8sTest.Spec() with { Timeout = TimeSpan.FromSeconds(30) });

        await context.WaitForLineAsync(": running");
        serverTime.Advance(TimeSpan.FromSeconds(30));

        await Assert.ThrowsAsync<JobTimeoutException>(() => run.WaitAsync(K8sTest.Limit));
        var job = server.GetObject("jobs", "default", $"jr-{context.JobId}-1")!;
        Assert.Contains(job["status"]!["conditions"]!.AsArray(), static c => c!["type"]!.GetValue<string>() == "Failed" && c["reason"]!.GetValue<string>() == "DeadlineExceeded");
    }
}
