using System.Text.Json;

namespace JobRunner.Worker;

/// <summary>The context of one running attempt; every write carries its lease.</summary>
internal sealed class AttemptContext(JobWorker worker, LeasedJob leased, ActiveAttempt attempt, ReadOnlyMemory<byte>? checkpoint) : WorkloadContext
{
    private readonly JobLease _lease = leased.Lease;
    private ReadOnlyMemory<byte>? _checkpoint = checkpoint;

    public override JobId JobId => _lease.JobId;

    public override int Attempt => _lease.Attempt;

    public override long FenceToken => _lease.FenceToken;

    public override JobRequest Request => leased.Request;

    public override ReadOnlyMemory<byte>? Checkpoint => _checkpoint;

    public override CancellationToken CheckpointRequested => worker.CheckpointRequested;

    public override IServiceProvider Services => ScopedServices ?? worker.Services;

    public override JsonSerializerOptions SerializerOptions => worker.SerializerOptions;

    /// <summary>Gets or sets the attempt's DI scope; set by the in-process engine.</summary>
    public IServiceProvider? ScopedServices { get; set; }

    public override async ValueTask SaveCheckpointAsync(ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken = default)
    {
        ThrowIfLeaseLost();
        await worker.Checkpoints.SaveAsync(leased, checkpoint, cancellationToken).ConfigureAwait(false);
        _checkpoint = checkpoint;
    }

    public override ValueTask ReportProgressAsync(double? fraction, string? message = null, CancellationToken cancellationToken = default)
    {
        if (fraction is { } f && (double.IsNaN(f) || f < 0 || f > 1))
        {
            throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "Progress is a fraction from 0 to 1.");
        }

        ThrowIfLeaseLost();
        return worker.Store.ReportProgressAsync(_lease, new JobProgress(fraction, message), cancellationToken);
    }

    public override TimeProvider TimeProvider => worker.Time;

    /// <summary>Gets the exit code the engine reported, if any.</summary>
    public int? ExitCode { get; private set; }

    public override async ValueTask LogAsync(IReadOnlyList<LogLine> lines, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(lines);
        ThrowIfLeaseLost();
        if (lines.Count == 0)
        {
            return;
        }

        var entries = await worker.Logs.AppendAsync(_lease, lines, cancellationToken).ConfigureAwait(false);
        worker.PublishLogs(leased, entries);
    }

    public override void ReportExitCode(int exitCode) => ExitCode = exitCode;

    private void ThrowIfLeaseLost()
    {
        if (attempt.Reason == StopReason.LeaseLost)
        {
            throw new StaleFenceTokenException(_lease.JobId, _lease.FenceToken, currentToken: null, "the lease could not be renewed");
        }

        if (attempt.IsClosed)
        {
            throw new StaleFenceTokenException(_lease.JobId, _lease.FenceToken, currentToken: null, "the attempt already ended");
        }
    }
}
