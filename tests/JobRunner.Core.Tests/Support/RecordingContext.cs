using System.Collections.Concurrent;

namespace JobRunner.Tests.Support;

/// <summary>A <see cref="WorkloadContext"/> for driving an engine directly: records log lines and the exit code.</summary>
public sealed class RecordingContext(TimeProvider? time = null) : WorkloadContext
{
    public ConcurrentQueue<LogLine> Lines { get; } = new();

    public int? ExitCode { get; private set; }

    public override JobId JobId { get; } = JobId.New(TimeProvider.System);

    public override int Attempt => 1;

    public override long FenceToken => 42;

    public override JobRequest Request { get; } = new("container");

    public override ReadOnlyMemory<byte>? Checkpoint => null;

    public override CancellationToken CheckpointRequested => CheckpointRequests.Token;

    /// <summary>Gets the source of <see cref="CheckpointRequested"/> (a host shutdown).</summary>
    public CancellationTokenSource CheckpointRequests { get; } = new();

    public override IServiceProvider Services => throw new NotSupportedException();

    public override TimeProvider TimeProvider { get; } = time ?? TimeProvider.System;

    private readonly ConcurrentDictionary<string, TaskCompletionSource> _waiters = new();

    /// <summary>Completes when a line with exactly <paramref name="text"/> has been logged.</summary>
    public Task WaitForLineAsync(string text)
    {
        var waiter = _waiters.GetOrAdd(text, static _ => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        if (Lines.Any(l => l.Message == text))
        {
            waiter.TrySetResult();
        }

        return waiter.Task;
    }

    public IEnumerable<string> Output(LogStream stream) => Lines.Where(l => l.Stream == stream).Select(l => l.Message);

    public override ValueTask SaveCheckpointAsync(ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public override ValueTask ReportProgressAsync(double? fraction, string? message = null, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    /// <summary>Gets or sets whether log writes fail, as a log store that cannot be reached (disk full, database down).</summary>
    public bool FailLogs { get; set; }

    public override ValueTask LogAsync(IReadOnlyList<LogLine> lines, CancellationToken cancellationToken = default)
    {
        if (FailLogs)
        {
            throw new IOException("The log store cannot be reached.");
        }

        foreach (var line in lines)
        {
            Lines.Enqueue(line);
            if (_waiters.TryGetValue(line.Message, out var waiter))
            {
                waiter.TrySetResult();
            }
        }

        return ValueTask.CompletedTask;
    }

    public override void ReportExitCode(int exitCode) => ExitCode = exitCode;
}
