using System.Collections.Concurrent;

namespace JobRunner.Kubernetes.Tests.Support;

/// <summary>A <see cref="WorkloadContext"/> for driving the engine directly: keeps checkpoints and log lines, and signals lines as they arrive.</summary>
#pragma warning disable CA1001 // A test context lives as long as its test.
public sealed class TestContext : WorkloadContext
#pragma warning restore CA1001
{
    private readonly ConcurrentQueue<LogLine> _lines = new();
    private readonly List<(Func<LogLine, bool> Match, TaskCompletionSource Done)> _waiters = [];
    private readonly CancellationTokenSource _checkpointRequested = new();

    private readonly ILogStore? _logs;

    /// <param name="logs">A log store the context also writes to, and serves as the host's <see cref="ILogStore"/>.</param>
    public TestContext(JobId? jobId = null, int attempt = 1, ReadOnlyMemory<byte>? checkpoint = null, TimeProvider? time = null, ILogStore? logs = null)
    {
        _logs = logs;
        JobId = jobId ?? JobId.New(TimeProvider.System);
        Attempt = attempt;
        SavedCheckpoint = checkpoint;
        TimeProvider = time ?? TimeProvider.System;
    }

    public override JobId JobId { get; }

    public override int Attempt { get; }

    public override long FenceToken => 7;

    public override JobRequest Request { get; } = new("container") { Tenant = "acme" };

    public ReadOnlyMemory<byte>? SavedCheckpoint { get; private set; }

    public override ReadOnlyMemory<byte>? Checkpoint => SavedCheckpoint;

    public override CancellationToken CheckpointRequested => _checkpointRequested.Token;

    public override IServiceProvider Services => new LogStoreServices(_logs);

    public override TimeProvider TimeProvider { get; }

    public int? ExitCode { get; private set; }

    public IReadOnlyList<LogLine> Lines => [.. _lines];

    public IEnumerable<string> Output => _lines.Where(static l => l.Stream == LogStream.Output).Select(static l => l.Message);

    /// <summary>Gets or sets what a write throws instead of storing the lines (a log store's failure); <see langword="null"/> to store them.</summary>
    public Func<IReadOnlyList<LogLine>, Exception?>? FailWrites { get; set; }

    public void RequestCheckpoint() => _checkpointRequested.Cancel();

    /// <summary>From now on every write is refused as a worker's attempt refuses them once its lease was lost.</summary>
    public void LoseLease() => _leaseLost = true;

    private volatile bool _leaseLost;

    private void ThrowIfLeaseLost()
    {
        if (_leaseLost)
        {
            throw new StaleFenceTokenException(JobId, FenceToken, FenceToken + 1, "the lease was lost");
        }
    }

    /// <summary>Completes when a line containing <paramref name="text"/> has been logged.</summary>
    public Task WaitForLineAsync(string text, LogStream? stream = null)
    {
        bool Match(LogLine l) => l.Message.Contains(text, StringComparison.Ordinal) && (stream is null || l.Stream == stream);
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_waiters)
        {
            if (_lines.Any(Match))
            {
                return Task.CompletedTask;
            }

            _waiters.Add((Match, done));
        }

        return done.Task.WaitAsync(TimeSpan.FromSeconds(30));
    }

    public override ValueTask SaveCheckpointAsync(ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken = default)
    {
        ThrowIfLeaseLost();
        SavedCheckpoint = checkpoint.ToArray();
        return ValueTask.CompletedTask;
    }

    public override ValueTask ReportProgressAsync(double? fraction, string? message = null, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public override async ValueTask LogAsync(IReadOnlyList<LogLine> lines, CancellationToken cancellationToken = default)
    {
        ThrowIfLeaseLost();
        if (FailWrites?.Invoke(lines) is { } failure)
        {
            throw failure;
        }

        if (_logs is not null)
        {
            await _logs.AppendAsync(new JobLease(JobId, "worker", FenceToken, Attempt, DateTimeOffset.MaxValue), lines, cancellationToken);
        }

        lock (_waiters)
        {
            foreach (var line in lines)
            {
                _lines.Enqueue(line);
                foreach (var (match, done) in _waiters)
                {
                    if (match(line))
                    {
                        done.TrySetResult();
                    }
                }
            }
        }
    }

    public override void ReportExitCode(int exitCode) => ExitCode = exitCode;

    private sealed class LogStoreServices(ILogStore? logs) : IServiceProvider
    {
        public object? GetService(Type serviceType) => serviceType == typeof(ILogStore) ? logs : null;
    }
}
