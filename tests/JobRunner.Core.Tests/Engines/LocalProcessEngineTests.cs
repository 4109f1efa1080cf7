using System.Globalization;
using JobRunner.Engines.Process;
using JobRunner.Tests.Support;

namespace JobRunner.Tests.Engines;

/// <summary>The local process engine against real processes (/bin/sh, sleep).</summary>
public sealed class LocalProcessEngineTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);
    private readonly string _dir = Directory.CreateTempSubdirectory("jobrunner-process-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static ContainerSpec Sh(string script, params EnvVar[] env) => new()
    {
        Image = "alpine:3.20",
        Command = ["/bin/sh", "-c", script],
        Env = env,
        Resources = new ContainerResources { CpuMillicores = 500, MemoryMb = 512 },
    };

    private static LocalProcessEngine Engine(ContainerSpec spec, ProcessEngineOptions? options = null)
        => new((_, _) => ValueTask.FromResult(spec), options ?? new ProcessEngineOptions(), TimeProvider.System);

    private static async Task<RecordingContext> RunAsync(ContainerSpec spec, ProcessEngineOptions? options = null, CancellationToken cancellationToken = default)
    {
        var context = new RecordingContext();
        using var engine = Engine(spec, options);
        await engine.ExecuteAsync(context, cancellationToken).AsTask().WaitAsync(Limit, CancellationToken.None);
        return context;
    }

    private static async Task<TException> RunFailingAsync<TException>(ContainerSpec spec, RecordingContext context, ProcessEngineOptions? options = null, CancellationToken cancellationToken = default)
        where TException : Exception
    {
        using var engine = Engine(spec, options);
        return await Assert.ThrowsAnyAsync<TException>(() => engine.ExecuteAsync(context, cancellationToken).AsTask().WaitAsync(Limit, CancellationToken.None));
    }

    private static bool IsAlive(int pid)
    {
        var stat = $"/proc/{pid}/stat";
        if (!File.Exists(stat))
        {
            return false;
        }

        try
        {
            var text = File.ReadAllText(stat);
            return text[(text.LastIndexOf(')') + 2)] != 'Z';
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>Runs the spec, cancels it once it logged "ready", and returns its exit code.</summary>
    private static async Task<int?> CancelAfterReadyAsync(ContainerSpec spec, ProcessEngineOptions? options = null)
    {
        var context = new RecordingContext();
        using var cts = new CancellationTokenSource();
        using var engine = Engine(spec, options);
        var run = engine.ExecuteAsync(context, cts.Token).AsTask();
        await Task.WhenAny(run, context.WaitForLineAsync("ready")).WaitAsync(Limit);

        await cts.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(Limit));
        return context.ExitCode;
    }

    /// <summary>
    /// A killed process leaves /proc shortly after kill(2) returns; the kernel gives no signal to wait on for a process
    /// that is not our child, so this polls, bounded.
    /// </summary>
    private static async Task AssertDeadAsync(IEnumerable<int> pids)
    {
        foreach (var pid in pids)
        {
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (IsAlive(pid) && DateTime.UtcNow < deadline)
            {
                await Task.Delay(10);
            }

            Assert.False(IsAlive(pid), $"process {pid} outlived the run");
        }
    }

    private List<int> Pids(string file) => [.. File.ReadAllLines(Path.Combine(_dir, file)).Where(l => l.Length > 0).Select(l => int.Parse(l, CultureInfo.InvariantCulture))];

    [Fact]
    public async Task Execute_ExitZero_SucceedsAndStreamsBothStreams()
    {
        var context = await RunAsync(Sh("echo out1; echo err1 >&2; echo out2"));

        Assert.Equal(0, context.ExitCode);
        Assert.Equal(["out1", "out2"], context.Output(LogStream.Output));
        Assert.Equal(["err1"], context.Output(LogStream.Error));
        var start = Assert.Single(context.Output(LogStream.System));
        Assert.Contains("image 'alpine:3.20' is not used", start, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Execute_NonZeroExit_FailsPermanentlyWithTheCode()
    {
        var context = new RecordingContext();

        var e = await RunFailingAsync<WorkloadExitException>(Sh("echo failing; exit 3"), context);

        Assert.Equal((3, ExitReason.NonZeroExit, false), (e.ExitCode, e.Reason, e.IsTransient));
        Assert.Equal(3, context.ExitCode);
        Assert.Contains("exited with code 3", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Execute_ConfiguredTransientExitCode_IsTransient()
    {
        var options = new ProcessEngineOptions();
        options.TransientExitCodes.Add(75);

        var e = await RunFailingAsync<WorkloadExitException>(Sh("exit 75"), new RecordingContext(), options);

        Assert.True(e.IsTransient);
    }

    [Fact]
    public async Task Execute_DefaultExitCodeKindTransient_AppliesToUnlistedCodes()
    {
        var options = new ProcessEngineOptions { DefaultExitCodeKind = FailureKind.Transient };

        var e = await RunFailingAsync<WorkloadExitException>(Sh("exit 9"), new RecordingContext(), options);

        Assert.True(e.IsTransient);
    }

    [Fact]
    public async Task Execute_KilledBySignal_IsTheSignalReasonAndTransientByDefault()
    {
        var e = await RunFailingAsync<WorkloadExitException>(Sh("kill -KILL $$"), new RecordingContext());

        Assert.Equal((137, ExitReason.Signal, true), (e.ExitCode, e.Reason, e.IsTransient));
        Assert.Contains("SIGKILL", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Execute_CommandNotFound_FailsPermanentlyAsStartFailed()
    {
        var spec = Sh("unused") with { Command = ["/nonexistent/jobrunner-tool"] };

        var e = await RunFailingAsync<WorkloadExitException>(spec, new RecordingContext());

        Assert.Equal(ExitReason.StartFailed, e.Reason);
        Assert.False(e.IsTransient);
    }

    [Fact]
    public async Task Execute_MissingWorkingDirectory_FailsPermanentlyAsStartFailed()
    {
        var spec = Sh("true") with { WorkingDirectory = "/nonexistent/dir" };

        var e = await RunFailingAsync<WorkloadExitException>(spec, new RecordingContext());

        Assert.Equal(ExitReason.StartFailed, e.Reason);
    }

    [Fact]
    public async Task Execute_InvalidSpec_FailsBeforeStarting()
    {
        var spec = Sh("true") with { Resources = new ContainerResources { CpuMillicores = 1 } };

        var e = await RunFailingAsync<JobValidationException>(spec, new RecordingContext());

        Assert.Contains("CpuMillicores is 1", Assert.Single(e.Errors), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Execute_LargeOutput_CapturesEveryLineInOrder()
    {
        var context = await RunAsync(Sh("i=0; while [ $i -lt 50000 ]; do echo \"line $i\"; i=$((i+1)); done"));

        var lines = context.Output(LogStream.Output).ToList();
        Assert.Equal(50_000, lines.Count);
        Assert.Equal("line 0", lines[0]);
        Assert.Equal("line 49999", lines[^1]);
        Assert.Equal(Enumerable.Range(0, 50_000).Select(i => $"line {i}"), lines);
    }

    [Fact]
    public async Task Execute_LineLongerThanAChunk_IsSplitNotBuffered_AndCrLfIsTrimmed()
    {
        var context = await RunAsync(Sh("printf 'a\\r\\nb\\n'; head -c 200000 /dev/zero | tr '\\0' 'y'"));

        var lines = context.Output(LogStream.Output).ToList();
        Assert.Equal(["a", "b"], lines[..2]);
        Assert.True(lines.Count > 3, "a 200 KB line should arrive in chunks");
        Assert.All(lines.Skip(2), l => Assert.InRange(l.Length, 1, 64 * 1024));
        Assert.Equal(new string('y', 200_000), string.Concat(lines.Skip(2)));
    }

    [Fact]
    public async Task Execute_InterleavedStreams_KeepOrderWithinEachStream()
    {
        var context = await RunAsync(Sh("i=0; while [ $i -lt 2000 ]; do echo \"o$i\"; echo \"e$i\" >&2; i=$((i+1)); done"));

        Assert.Equal(Enumerable.Range(0, 2000).Select(i => $"o{i}"), context.Output(LogStream.Output));
        Assert.Equal(Enumerable.Range(0, 2000).Select(i => $"e{i}"), context.Output(LogStream.Error));
        Assert.All(context.Lines, l => Assert.NotEqual(default, l.Timestamp));
    }

    [Fact]
    public async Task Execute_Env_SecretsReachTheProcessButNotTheLogsOrReads()
    {
        Environment.SetEnvironmentVariable("JOBRUNNER_TEST_HOST_ONLY", "host-value");
        var spec = Sh("echo \"token=$API_TOKEN region=$REGION host=${JOBRUNNER_TEST_HOST_ONLY:-unset} job=$JOBRUNNER_JOB_ID\"", EnvVar.Secret("API_TOKEN", "s3cr3t"), new EnvVar("REGION", "eu-1"));

        var context = await RunAsync(spec);

        var line = Assert.Single(context.Output(LogStream.Output));
        Assert.Equal($"token=s3cr3t region=eu-1 host=unset job={context.JobId}", line);
        Assert.DoesNotContain("s3cr3t", Assert.Single(context.Output(LogStream.System)), StringComparison.Ordinal);
        Assert.DoesNotContain("s3cr3t", spec.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("s3cr3t", spec.Redact().Env[0].Value, StringComparison.Ordinal);
        Assert.Equal("API_TOKEN=***", spec.Env[0].ToString());
    }

    [Fact]
    public async Task Execute_Cancelled_TerminatesTheWholeProcessTree()
    {
        var exitCode = await CancelAfterReadyAsync(Sh($"sleep 60 & echo $! >> {_dir}/pids; sleep 60 & echo $! >> {_dir}/pids; echo ready; wait"));

        Assert.Equal(143, exitCode);
        await AssertDeadAsync(Pids("pids"));
    }

    [Fact]
    public async Task Execute_WithoutProcessGroups_RunsAndIsStoppedOnCancel()
    {
        var options = new ProcessEngineOptions { UseProcessGroups = false, KillGracePeriod = TimeSpan.FromMilliseconds(300) };
        Assert.Equal(["fast"], (await RunAsync(Sh("echo fast"), options)).Output(LogStream.Output));

        Assert.Equal(137, await CancelAfterReadyAsync(Sh("trap '' TERM; echo ready; while true; do sleep 1; done"), options));
    }

    [Fact]
    public async Task Execute_WithoutProcessGroups_CancelStillStopsTheDescendants()
    {
        // The main shell dies at SIGTERM; one child ignores SIGTERM, and the other would outlive its parent by default.
        var options = new ProcessEngineOptions { UseProcessGroups = false, KillGracePeriod = TimeSpan.FromMilliseconds(300) };
        var exitCode = await CancelAfterReadyAsync(Sh($"sh -c \"trap '' TERM; sleep 60\" & echo $! >> {_dir}/pids; sleep 60 & echo $! >> {_dir}/pids; echo ready; wait"), options);

        Assert.Equal(143, exitCode);
        await AssertDeadAsync(Pids("pids"));
    }

    [Fact]
    public async Task Execute_HostShutdownWithAGraceLongerThanTheKillGrace_AProcessThatFinishesMeanwhileSucceeds()
    {
        // SIGTERM would come 50 s after the request (60 s of shutdown grace less 10 s of kill grace): the process ends first.
        var context = new RecordingContext();
        using var engine = new LocalProcessEngine((_, _) => ValueTask.FromResult(Sh("echo ready; sleep 1; echo finished")), new ProcessEngineOptions(), TimeProvider.System, shutdownGracePeriod: TimeSpan.FromSeconds(60));
        var run = engine.ExecuteAsync(context, CancellationToken.None).AsTask();
        await Task.WhenAny(run, context.WaitForLineAsync("ready")).WaitAsync(Limit);

        await context.CheckpointRequests.CancelAsync();

        await run.WaitAsync(Limit);
        Assert.Equal(0, context.ExitCode);
        Assert.Contains("finished", context.Output(LogStream.Output));
    }

    [Fact]
    public async Task Execute_HostShutdownRequestsACheckpoint_TheProcessGetsSigtermAndTheRunEndsAsCancelled()
    {
        // With the defaults (shutdown grace and kill grace both 10 s) SIGTERM comes at once.
        var context = new RecordingContext();
        using var engine = Engine(Sh("trap 'echo checkpointed; exit 3' TERM; echo ready; while true; do sleep 1; done"));
        var run = engine.ExecuteAsync(context, CancellationToken.None).AsTask();
        await Task.WhenAny(run, context.WaitForLineAsync("ready")).WaitAsync(Limit);

        await context.CheckpointRequests.CancelAsync();

        // A release, not a failure: the worker queues the job again (Interrupted) instead of counting a failed attempt.
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run.WaitAsync(Limit));
        Assert.Equal(3, context.ExitCode);
        Assert.Contains("checkpointed", context.Output(LogStream.Output));
    }

    [Fact]
    public async Task Execute_CancelledAndIgnoringSigterm_IsKilledAfterGrace()
    {
        var exitCode = await CancelAfterReadyAsync(Sh("trap '' TERM; echo ready; while true; do sleep 1; done"), new ProcessEngineOptions { KillGracePeriod = TimeSpan.FromMilliseconds(300) });

        Assert.Equal(137, exitCode);
    }

    [Fact]
    public async Task Execute_SpecTimeout_FailsAsTimeout()
    {
        var spec = Sh("sleep 60") with { Timeout = TimeSpan.FromMilliseconds(200) };

        var e = await RunFailingAsync<JobTimeoutException>(spec, new RecordingContext());

        Assert.Equal(TimeSpan.FromMilliseconds(200), e.Timeout);
    }

    [Fact]
    public async Task Execute_LogStoreFailing_TheProcessStillRunsToItsEnd_UnderSupervision()
    {
        // Was: the first log line's failure left the attempt at once, with the process running on unsupervised.
        var context = new RecordingContext { FailLogs = true };
        using var engine = Engine(Sh($"echo $$ > {_dir}/main; sleep 0.3; exit 3"));

        var error = await Assert.ThrowsAsync<WorkloadExitException>(() => engine.ExecuteAsync(context, CancellationToken.None).AsTask().WaitAsync(Limit));

        Assert.Equal(3, error.ExitCode);
        await AssertDeadAsync(Pids("main"));
    }

    [Fact]
    public async Task Execute_ADescendantInAnotherSessionHoldsThePipes_TheRunEndsWithItsMainProcess()
    {
        // setsid puts the child outside the process group, so the group kill does not reach it, and it keeps stdout open.
        var context = new RecordingContext();
        // (The main process waits until the child has left the group, or the group kill could still reach it.)
        using var engine = Engine(Sh($"/usr/bin/setsid /bin/sh -c 'echo $$ > {_dir}/daemon; exec /bin/sleep 60' & while [ ! -s {_dir}/daemon ]; do /bin/sleep 0.01; done; echo started; exit 0"));
        try
        {
            await engine.ExecuteAsync(context, CancellationToken.None).AsTask().WaitAsync(Limit);

            Assert.Equal(0, context.ExitCode);
            Assert.Contains("started", context.Output(LogStream.Output));
            Assert.Contains(context.Output(LogStream.System), l => l.Contains("output pipes were still open", StringComparison.Ordinal));
        }
        finally
        {
            foreach (var pid in File.Exists(Path.Combine(_dir, "daemon")) ? Pids("daemon") : [])
            {
                try
                {
                    System.Diagnostics.Process.GetProcessById(pid).Kill();
                }
                catch (ArgumentException)
                {
                }
            }
        }
    }

    [Fact]
    public async Task Execute_MainProcessExitsLeavingBackgroundChild_ChildIsKilledAndRunEnds()
    {
        var context = await RunAsync(Sh($"sleep 60 & echo $! >> {_dir}/orphans; echo done"));

        Assert.Equal(0, context.ExitCode);
        Assert.Contains("done", context.Output(LogStream.Output));
        await AssertDeadAsync(Pids("orphans"));
    }
}
