using System.Buffers;
using System.Collections.Concurrent;
using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Threading.Channels;

namespace JobRunner.Engines.Process;

/// <summary>
/// Runs a <see cref="ContainerSpec"/> as a local child process. The image only names the environment: locally the
/// command runs on the host, found on its PATH (the start log line says so). The child leads its own process group
/// (through <c>setsid</c>; see <see cref="ProcessEngineOptions.UseProcessGroups"/>), so cancellation and timeouts reach the whole tree: SIGTERM, then SIGKILL after the grace
/// period. Once the main process exits, whatever it left behind in its group is killed, so no orphan outlives a run.
/// stdout and stderr are streamed line by line, in batches, into the job's log while the process runs.
/// </summary>
internal sealed class LocalProcessEngine : IExecutionEngine, IDisposable
{
    private const int ChunkSize = 64 * 1024;
    private static readonly string[] s_inherited = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"];

    private readonly Func<WorkloadContext, CancellationToken, ValueTask<ContainerSpec>> _resolve;
    private readonly ProcessEngineOptions _options;
    private readonly TimeProvider _time;
    private readonly TimeSpan _shutdownGracePeriod;
    private readonly ConcurrentDictionary<int, bool> _running = new();

    /// <param name="resolve">Resolves an attempt's spec.</param>
    /// <param name="options">The engine's options.</param>
    /// <param name="time">The clock.</param>
    /// <param name="shutdownGracePeriod">The worker's <see cref="WorkerOptions.ShutdownGracePeriod"/>: a process is sent
    /// SIGTERM <see cref="ProcessEngineOptions.KillGracePeriod"/> before it ends.</param>
    public LocalProcessEngine(Func<WorkloadContext, CancellationToken, ValueTask<ContainerSpec>> resolve, ProcessEngineOptions options, TimeProvider time, TimeSpan shutdownGracePeriod = default)
    {
        _resolve = resolve;
        _options = options;
        _time = time;
        _shutdownGracePeriod = shutdownGracePeriod;
        AppDomain.CurrentDomain.ProcessExit += OnProcessExit;
    }

    public async ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
    {
        var spec = await _resolve(context, cancellationToken).ConfigureAwait(false);
        spec.ThrowIfInvalid();

        // Beyond what a timer can hold (about 49.7 days): in practice no timeout, as for a job's own timeout.
        using var timeout = spec.Timeout is { } limit && limit <= TimerLimits.Max ? new CancellationTokenSource(limit, _time) : null;
        // At a host shutdown (the worker's checkpoint request) the process gets SIGTERM KillGracePeriod before the worker's
        // ShutdownGracePeriod ends (at once when the kill grace is the longer, as with the defaults): one that finishes
        // before then succeeds, and one that does not is stopped gracefully within the grace. The run is then a release
        // (queued again, its attempt not counted as failed).
        using var shutdown = new CancellationTokenSource(Timeout.InfiniteTimeSpan, _time);
        using var onShutdown = context.CheckpointRequested.Register(
            static s =>
            {
                var (source, delay) = ((CancellationTokenSource, TimeSpan))s!;
                source.CancelAfter(delay > TimeSpan.Zero ? delay : TimeSpan.Zero);
            },
            (shutdown, _shutdownGracePeriod - _options.KillGracePeriod));
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout?.Token ?? default, shutdown.Token);
        var stop = linked.Token;

        // Not started at all when it would be stopped at once (the host is stopping, or the attempt was cancelled).
        stop.ThrowIfCancellationRequested();
        var groups = ProcessGroup.IsSupported && _options.UseProcessGroups;
        using var process = Start(context, spec, groups);
        _running.TryAdd(process.Id, groups);
        var exited = false;
        try
        {
            // Best effort, as every log write here: a log store that fails (or a lease lost meanwhile, which also stops
            // the attempt) must not leave the process running unsupervised.
            await TryLogAsync(
                context,
                $"Started process {process.Id}: {string.Join(' ', spec.Command.Concat(spec.Args))} (image '{spec.Image}' is not used by the local process engine; the command runs on this host).").ConfigureAwait(false);

            // Each stream is read in 64 KB chunks, split into lines, and handed over a batch at a time: the channel
            // holds at most a few batches, so a fast writer is slowed to the log store's pace, never buffered whole.
            var batches = Channel.CreateBounded<LogLine[]>(new BoundedChannelOptions(8) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
            var stdout = PumpAsync(process.StandardOutput.BaseStream, LogStream.Output, batches.Writer);
            var stderr = PumpAsync(process.StandardError.BaseStream, LogStream.Error, batches.Writer);
            var writer = WriteLogsAsync(context, batches.Reader);
            // (A pump left behind by the drain limit below fails once its pipe or the channel closes: observed here.)
            var readers = Task.WhenAll(stdout, stderr).ContinueWith(
                static (t, w) =>
                {
                    _ = t.Exception;
                    ((ChannelWriter<LogLine[]>)w!).TryComplete();
                },
                batches.Writer,
                CancellationToken.None,
                TaskContinuationOptions.ExecuteSynchronously,
                TaskScheduler.Default);

            var stopped = false;
            var timedOut = false;
            try
            {
                await process.WaitForExitAsync(stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                // What stopped it, as it stood then (a shutdown during the stop does not make a timeout a release).
                stopped = true;
                timedOut = timeout is { IsCancellationRequested: true } && !cancellationToken.IsCancellationRequested && !shutdown.IsCancellationRequested;
                await StopAsync(process, groups).ConfigureAwait(false);
            }

            exited = true;

            // Whatever the main process left in its group must not outlive the run (and must not hold the pipes open).
            if (groups)
            {
                ProcessGroup.Signal(process.Id, ProcessGroup.SigKill);
            }

            try
            {
                await readers.WaitAsync(OutputDrainLimit, _time, CancellationToken.None).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                // A descendant outside the group (setsid, a daemon; or no groups at all) still holds the pipes: the run
                // ended with its main process, and what that descendant writes from now on is not collected.
                batches.Writer.TryComplete();
                await TryLogAsync(context, $"Process {process.Id} exited, but its output pipes were still open {OutputDrainLimit.TotalSeconds:0} s later (a process it started, outside its process group, holds them); later output is not collected.").ConfigureAwait(false);
            }

            await writer.ConfigureAwait(false);

            var exitCode = process.ExitCode;
            context.ReportExitCode(exitCode);
            if (stopped)
            {
                if (timedOut)
                {
                    throw new JobTimeoutException(context.JobId, spec.Timeout!.Value);
                }

                throw new OperationCanceledException(
                    shutdown.IsCancellationRequested && !cancellationToken.IsCancellationRequested
                        ? "The process was stopped: the host is shutting down."
                        : "The process was stopped.",
                    cancellationToken);
            }

            if (exitCode != 0)
            {
                throw Classify(exitCode);
            }
        }
        finally
        {
            if (!exited)
            {
                // Left early (an exception before the process ended): the process does not outlive the attempt.
                Kill(process, groups);
            }

            _running.TryRemove(process.Id, out _);
        }
    }

    /// <summary>How long the output pipes may stay open after the main process exited and its group was killed.</summary>
    internal static readonly TimeSpan OutputDrainLimit = TimeSpan.FromSeconds(5);

    private static async Task TryLogAsync(WorkloadContext context, string message)
    {
        try
        {
            await context.LogAsync(message, LogStream.System, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception)
        {
            // The log is best effort; the attempt's outcome does not depend on it (no token is passed: a cancellation
            // can only be the store's own, e.g. an HTTP timeout).
        }
    }

    private static void Kill(System.Diagnostics.Process process, bool groups)
    {
        try
        {
            if (groups)
            {
                ProcessGroup.Signal(process.Id, ProcessGroup.SigKill);
            }
            else if (!process.HasExited)
            {
                // Without a group, the tree as it stands now is the best reach.
                process.Kill(entireProcessTree: true);
            }
        }
        catch (Exception e) when (e is InvalidOperationException or Win32Exception or NotSupportedException)
        {
            // Already gone.
        }
    }

    public void Dispose()
    {
        AppDomain.CurrentDomain.ProcessExit -= OnProcessExit;
        KillAll();
    }

    private System.Diagnostics.Process Start(WorkloadContext context, ContainerSpec spec, bool groups)
    {
        var argv = spec.Command.Concat(spec.Args).ToList();
        var info = new ProcessStartInfo
        {
            FileName = groups ? ProcessGroup.SetsidPath : argv[0],
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = spec.WorkingDirectory ?? _options.DefaultWorkingDirectory ?? Environment.CurrentDirectory,
        };
        if (groups)
        {
            // setsid reads options up to "--": a command that starts with '-' is the command.
            info.ArgumentList.Add("--");
        }

        foreach (var arg in groups ? argv : argv.Skip(1))
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

        foreach (var env in spec.Env)
        {
            info.Environment[env.Name] = env.Value;
        }

        // Set last: the spec cannot change what the attempt is (a process that fences its own writes reads its token here).
        info.Environment["JOBRUNNER_JOB_ID"] = context.JobId.ToString();
        info.Environment["JOBRUNNER_ATTEMPT"] = context.Attempt.ToString(CultureInfo.InvariantCulture);
        info.Environment["JOBRUNNER_FENCE_TOKEN"] = context.FenceToken.ToString(CultureInfo.InvariantCulture);
        info.Environment["JOBRUNNER_TENANT"] = context.Request.Tenant;

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

    private async Task StopAsync(System.Diagnostics.Process process, bool groups)
    {
        // Without a group, the tree as it stands now (Linux) gets the signals a group would: once the main process has
        // exited, its orphaned descendants could no longer be found.
        var tree = groups ? [] : ProcessGroup.Descendants(process.Id);
        ProcessGroup.Send(process.Id, ProcessGroup.SigTerm, groups);
        ProcessGroup.SignalEach(tree, ProcessGroup.SigTerm);
        using var grace = new CancellationTokenSource(_options.KillGracePeriod, _time);
        try
        {
            await process.WaitForExitAsync(grace.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Kill(process, groups);
            await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
        }

        // What is left of the tree goes, as what is left of a group does.
        ProcessGroup.SignalEach(tree, ProcessGroup.SigKill);
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

    private async Task PumpAsync(Stream stream, LogStream kind, ChannelWriter<LogLine[]> batches)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            var filled = 0;
            var lines = new List<LogLine>(256);
            while (true)
            {
                var read = await stream.ReadAsync(buffer.AsMemory(filled, buffer.Length - filled)).ConfigureAwait(false);
                if (read == 0)
                {
                    if (filled > 0)
                    {
                        lines.Add(new LogLine(_time.GetUtcNow(), kind, Decode(buffer.AsSpan(0, filled))));
                    }

                    await FlushAsync(lines, batches).ConfigureAwait(false);
                    return;
                }

                // Lines that arrive in one read share its timestamp.
                var now = _time.GetUtcNow();
                var data = buffer.AsSpan(0, filled + read);
                var start = 0;
                for (var newline = data.IndexOf((byte)'\n'); newline >= 0; newline = data[start..].IndexOf((byte)'\n'))
                {
                    lines.Add(new LogLine(now, kind, Decode(data.Slice(start, newline))));
                    start += newline + 1;
                }

                filled = data.Length - start;
                if (filled == buffer.Length)
                {
                    // A line longer than a chunk is split, so that memory stays bounded.
                    lines.Add(new LogLine(now, kind, Decode(data)));
                    filled = 0;
                }
                else if (start > 0)
                {
                    data[start..].CopyTo(buffer);
                }

                if (lines.Count > 0)
                {
                    await FlushAsync(lines, batches).ConfigureAwait(false);
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static async ValueTask FlushAsync(List<LogLine> lines, ChannelWriter<LogLine[]> batches)
    {
        if (lines.Count == 0)
        {
            return;
        }

        var batch = lines.ToArray();
        lines.Clear();
        if (!batches.TryWrite(batch))
        {
            await batches.WriteAsync(batch).ConfigureAwait(false);
        }
    }

    private static string Decode(ReadOnlySpan<byte> line)
    {
        if (!line.IsEmpty && line[^1] == (byte)'\r')
        {
            line = line[..^1];
        }

        return Encoding.UTF8.GetString(line);
    }

    private static async Task WriteLogsAsync(WorkloadContext context, ChannelReader<LogLine[]> batches)
    {
        while (await batches.WaitToReadAsync().ConfigureAwait(false))
        {
            while (batches.TryRead(out var batch))
            {
                try
                {
                    await context.LogAsync(batch, CancellationToken.None).ConfigureAwait(false);
                }
                catch (Exception)
                {
                    // The lease is gone or the log store failed (a cancellation too can only be the store's own: no
                    // token is passed): keep draining, so that the process never blocks on a full pipe; the worker
                    // stops the attempt when the lease is lost.
                }
            }
        }
    }

    private void OnProcessExit(object? sender, EventArgs e) => KillAll();

    private void KillAll()
    {
        foreach (var (pid, groups) in _running)
        {
            ProcessGroup.Send(pid, ProcessGroup.SigKill, groups);
        }
    }
}
