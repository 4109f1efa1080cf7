using System.Threading.Channels;
using JobRunner.Testing;

namespace JobRunner.Tests.Support;

/// <summary>Forwards to a real store and reports lease renewals, so tests can wait for a heartbeat instead of sleeping.</summary>
public sealed class SignalingStore(IJobStore inner) : DelegatingJobStore(inner)
{
    public Channel<IReadOnlyList<JobLease>> Renewals { get; } = Channel.CreateUnbounded<IReadOnlyList<JobLease>>();

    public override async ValueTask<IReadOnlyList<JobId>> RenewLeasesAsync(IReadOnlyList<JobLease> leases, TimeSpan duration, CancellationToken cancellationToken)
    {
        var lost = await Inner.RenewLeasesAsync(leases, duration, cancellationToken);
        Renewals.Writer.TryWrite(leases);
        return lost;
    }
}
