using System.Collections.Concurrent;
using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Threading.Channels;

namespace JobRunner.Engines.Process;

/// <summary>
/// Runs a <see cref="ContainerSpec"/> as a local child process. The image only names the environment: locally the
/// command runs on the host, found on its PATH (the start log line says so). The child leads its own process group
/// (through <c>setsid</c>), so cancellation and timeouts reach the whole tree: SIGTERM, then SIGKILL after the grace
/// period. Once the main process exits, whatever it left behind in its group is killed, so no orphan outlives a run.
/// stdout and stderr are streamed line by line, in batches, into the job's log while the process runs.
/// </summary>
internal sealed class LocalProcessEngine : IExecutionEngine, IDisposable
{
    private const int BatchSize = 1024;
    private static readonly string[] s_inherited = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"];

    private readonly Func<WorkloadContext, CancellationToken, ValueTask<ContainerSpec>> _resolve;
    private readonly ProcessEngineOptions _options;
    private readonly TimeProvider _time;
    private readonly ConcurrentDictionary<int, byte> _running = new();

    public LocalProcessEngine(Func<WorkloadContext, CancellationToken, ValueTask<ContainerSpec>> resolve, ProcessEngineOptions options, TimeProvider time)
    {
        _resolve = resolve;
        _options = options;
        _time = time;
        AppDomain.CurrentDomain.ProcessExit += OnProcessExit;
    }

    public async ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
    {
        var spec = await _resolve(context, cancellationToken).ConfigureAwait(false);
        spec.ThrowIfInvalid();

        using var timeout = spec.Timeout is { } limit ? new CancellationTokenSource(limit, _time) : null;
        using var linked = timeout is null ? null : CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        var stop = linked?.Token ?? cancellationToken;

        using var process = Start(context, spec);
        _running.TryAdd(process.Id, 0);
        try
        {
            await context.LogAsync(
                $"Started process {process.Id}: {string.Join(' ', spec.Command.Concat(spec.Args))} (image '{spec.Image}' is not used by the local process engine; the command runs on this host).",
                LogStream.System,
                CancellationToken.None).ConfigureAwait(false);

            var lines = Channel.CreateBounded<LogLine>(new BoundedChannelOptions(BatchSize * 4) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
            var stdout = PumpAsync(process.StandardOutput, LogStream.Output, lines.Writer);
            var stderr = PumpAsync(process.StandardError, LogStream.Error, lines.Writer);
            var writer = WriteLogsAsync(context, lines.Reader);
            var readers = Task.WhenAll(stdout, stderr).ContinueWith(static (_, w) => ((ChannelWriter<LogLine>)w!).TryComplete(), lines.Writer, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);

            var stopped = false;
            try
            {
                await process.WaitForExitAsync(stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                stopped = true;
                await StopAsync(process).ConfigureAwait(false);
            }

            // Whatever the main process left in its group must not outlive the run (and must not hold the pipes open).
            ProcessGroup.Signal(process.Id, ProcessGroup.SigKill);
            await readers.ConfigureAwait(false);
            await writer.ConfigureAwait(false);

            var exitCode = process.ExitCode;
            context.ReportExitCode(exitCode);
            if (stopped)
            {
                if (timeout is { IsCancellationRequested: true } && !cancellationToken.IsCancellationRequested)
                {
                    throw new JobTimeoutException(context.JobId, spec.Timeout!.Value);
                }

                throw new OperationCanceledException("The process was stopped.", cancellationToken);
            }

            if (exitCode != 0)
            {
                throw Classify(exitCode);
            }
        }
        finally
        {
            _running.TryRemove(process.Id, out _);
        }
    }

    public void Dispose()
    {
        AppDomain.CurrentDomain.ProcessExit -= OnProcessExit;
        KillAll();
    }

    private System.Diagnostics.Process Start(WorkloadContext context, ContainerSpec spec)
    {
        var argv = spec.Command.Concat(spec.Args).ToList();
        var info = new ProcessStartInfo
        {
            FileName = ProcessGroup.IsSupported ? ProcessGroup.SetsidPath : argv[0],
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = spec.WorkingDirectory ?? _options.DefaultWorkingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (var arg in ProcessGroup.IsSupported ? argv : argv.Skip(1))
        {
            info.ArgumentList.Add(arg);
        }

        if (!_options.InheritEnvironment)
        {
            var keep = s_inherited.Select(name => (name, value: Environment.GetEnvironmentVariable(name))).Where(x => x.value is not null).ToList();
            info.Environment.Clear();
            foreach (var (name, value) in keep)
            {
                info.Environment[name] = value;
            }
        }

        info.Environment["JOBRUNNER_JOB_ID"] = context.JobId.ToString();
        info.Environment["JOBRUNNER_ATTEMPT"] = context.Attempt.ToString(CultureInfo.InvariantCulture);
        info.Environment["JOBRUNNER_FENCE_TOKEN"] = context.FenceToken.ToString(CultureInfo.InvariantCulture);
        info.Environment["JOBRUNNER_TENANT"] = context.Request.Tenant;
        foreach (var env in spec.Env)
        {
            info.Environment[env.Name] = env.Value;
        }

        try
        {
            var process = System.Diagnostics.Process.Start(info) ?? throw new InvalidOperationException("Process.Start returned null.");
            process.StandardInput.Close();
            return process;
        }
        catch (Exception e) when (e is Win32Exception or DirectoryNotFoundException or FileNotFoundException)
        {
            throw new WorkloadExitException(null, ExitReason.StartFailed, isTransient: false, $"Could not start '{argv[0]}' in '{info.WorkingDirectory}': {e.Message}. Check that the command exists on this host and the working directory exists.");
        }
    }

    private async Task StopAsync(System.Diagnostics.Process process)
    {
        ProcessGroup.Signal(process.Id, ProcessGroup.SigTerm);
        if (!ProcessGroup.IsSupported)
        {
            process.Kill(entireProcessTree: true);
        }

        using var grace = new CancellationTokenSource(_options.KillGracePeriod, _time);
        try
        {
            await process.WaitForExitAsync(grace.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            ProcessGroup.Signal(process.Id, ProcessGroup.SigKill);
            await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
        }
    }

    private WorkloadExitException Classify(int exitCode)
    {
        var kind = _options.PermanentExitCodes.Contains(exitCode) ? FailureKind.Permanent
            : _options.TransientExitCodes.Contains(exitCode) ? FailureKind.Transient
            : _options.DefaultExitCodeKind;
        var transient = kind == FailureKind.Transient;
        if (exitCode > 128 && exitCode < 128 + 65)
        {
            var signal = exitCode - 128;
            return new WorkloadExitException(exitCode, ExitReason.Signal, transient, $"The process was killed by {ProcessGroup.SignalName(signal)} (exit code {exitCode}).");
        }

        if (exitCode is 126 or 127)
        {
            return new WorkloadExitException(exitCode, ExitReason.StartFailed, transient, $"The command could not run (exit code {exitCode}: {(exitCode == 127 ? "not found" : "not executable")}). Check Command[0] on this host.");
        }

        return new WorkloadExitException(exitCode, ExitReason.NonZeroExit, transient, $"The process exited with code {exitCode}.");
    }

    private async Task PumpAsync(StreamReader reader, LogStream stream, ChannelWriter<LogLine> lines)
    {
        while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line)
        {
            var entry = new LogLine(_time.GetUtcNow(), stream, line);
            if (!lines.TryWrite(entry))
            {
                await lines.WriteAsync(entry).ConfigureAwait(false);
            }
        }
    }

    private static async Task WriteLogsAsync(WorkloadContext context, ChannelReader<LogLine> lines)
    {
        var batch = new List<LogLine>(BatchSize);
        while (await lines.WaitToReadAsync().ConfigureAwait(false))
        {
            while (batch.Count < BatchSize && lines.TryRead(out var line))
            {
                batch.Add(line);
            }

            try
            {
                await context.LogAsync(batch.ToArray(), CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // The lease is gone or the log store failed: keep draining, so that the process never blocks on a full
                // pipe; the worker stops the attempt when the lease is lost.
            }

            batch.Clear();
        }
    }

    private void OnProcessExit(object? sender, EventArgs e) => KillAll();

    private void KillAll()
    {
        foreach (var pid in _running.Keys)
        {
            ProcessGroup.Signal(pid, ProcessGroup.SigKill);
        }
    }
}
