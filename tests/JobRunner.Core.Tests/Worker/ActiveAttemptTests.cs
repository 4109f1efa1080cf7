using JobRunner.Testing;
using JobRunner.Worker;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Tests.Worker;

public sealed class ActiveAttemptTests : IDisposable
{
    private readonly FakeTimeProvider _time = new();
    private readonly ServiceProvider _host;
    private readonly JobWorker _worker;

    public ActiveAttemptTests()
    {
        _host = new ServiceCollection().AddSingleton<TimeProvider>(_time).AddJobRunner(_ => { }).BuildServiceProvider();
        _worker = _host.GetRequiredService<JobWorker>();
    }

    public void Dispose() => _host.Dispose();

    private ActiveAttempt NewAttempt() => new(new QueuedJob { Id = JobId.New(_time), Priority = 5, Tenant = "t", Workload = "w", EnqueuedAt = _time.GetUtcNow() }, _worker);

    [Fact]
    public void TryStop_WithGrace_CancelsTokenAndAbandonsOnlyAfterGrace()
    {
        using var attempt = NewAttempt();

        Assert.True(attempt.TryStop(StopReason.Cancelled, "stop", TimeSpan.FromSeconds(10)));

        Assert.True(attempt.Token.IsCancellationRequested);
        _time.Advance(TimeSpan.FromSeconds(9));
        Assert.False(attempt.Abandoned.IsCompleted);
        _time.Advance(TimeSpan.FromSeconds(1));
        Assert.True(attempt.Abandoned.IsCompleted);
    }

    [Fact]
    public void TryStop_ZeroGrace_AbandonsAtOnce()
    {
        using var attempt = NewAttempt();

        attempt.TryStop(StopReason.LeaseLost, null, TimeSpan.Zero);

        Assert.True(attempt.Abandoned.IsCompleted);
    }

    [Fact]
    public void TryStop_Twice_FirstReasonWins()
    {
        using var attempt = NewAttempt();

        Assert.True(attempt.TryStop(StopReason.TimedOut, null, TimeSpan.Zero));
        Assert.False(attempt.TryStop(StopReason.Cancelled, "late", TimeSpan.Zero));

        Assert.Equal(StopReason.TimedOut, attempt.Reason);
        Assert.Null(attempt.Message);
    }

    [Fact]
    public void Finish_BeforeStop_StopHasNoEffect()
    {
        using var attempt = NewAttempt();

        Assert.Equal(StopReason.None, attempt.Finish());
        Assert.False(attempt.TryStop(StopReason.Cancelled, "too late", TimeSpan.Zero));

        Assert.False(attempt.Token.IsCancellationRequested);
    }

    [Fact]
    public void Finish_AfterStop_ReturnsTheReason()
    {
        using var attempt = NewAttempt();
        attempt.TryStop(StopReason.Cancelled, "user", TimeSpan.FromSeconds(5));

        Assert.Equal(StopReason.Cancelled, attempt.Finish());
    }

    [Fact]
    public void ArmTimeout_FiresAtTimeout()
    {
        using var attempt = NewAttempt();
        attempt.ArmTimeout(TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(5));

        _time.Advance(TimeSpan.FromSeconds(29));
        Assert.False(attempt.Token.IsCancellationRequested);
        _time.Advance(TimeSpan.FromSeconds(1));

        Assert.Equal(StopReason.TimedOut, attempt.Reason);
        Assert.True(attempt.Token.IsCancellationRequested);
        Assert.False(attempt.Abandoned.IsCompleted);
        _time.Advance(TimeSpan.FromSeconds(5));
        Assert.True(attempt.Abandoned.IsCompleted);
    }

    [Fact]
    public void Close_FinishedWithoutStop_HandsBackItsSource_WhichALateStopOrTimeoutCannotCancel()
    {
        var attempt = NewAttempt();
        var registration = attempt.Token.Register(static () => { });
        attempt.ArmTimeout(TimeSpan.FromSeconds(30), TimeSpan.Zero);
        attempt.Finish();

        using var reused = attempt.Close();

        Assert.NotNull(reused);
        // The reset dropped the first attempt's registrations: there is nothing left to unregister.
        Assert.False(registration.Unregister());
        // Closing again (a stray Dispose) must not reset or dispose the source the next attempt now holds.
        Assert.Null(attempt.Close());
        attempt.Dispose();
        using var next = new ActiveAttempt(new QueuedJob { Id = JobId.New(_time), Priority = 5, Tenant = "t", Workload = "w", EnqueuedAt = _time.GetUtcNow() }, _worker, reused);
        Assert.False(attempt.TryStop(StopReason.Cancelled, "late", TimeSpan.Zero));
        _time.Advance(TimeSpan.FromSeconds(30));
        Assert.False(next.Token.IsCancellationRequested);

        // The next attempt's stop works.
        Assert.True(next.TryStop(StopReason.Cancelled, "now", TimeSpan.Zero));
        Assert.True(next.Token.IsCancellationRequested);
    }

    [Theory]
    [InlineData((int)StopReason.Cancelled)]
    [InlineData((int)StopReason.TimedOut)]
    [InlineData((int)StopReason.LeaseLost)]
    public async Task Close_StoppedAndAbandonedAtOnce_TheWorkloadStillSeesItsTokenCancelled_AndTheSourceIsNotReused(int reason)
    {
        var attempt = NewAttempt();
        var token = attempt.Token;

        // What a workload waiting on its token registers (Task.Delay(…, token), a socket read): it must run, even though
        // the worker closes the attempt as soon as it is abandoned, before the stop's callbacks ran on the thread pool.
        var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var registration = token.Register(() => seen.TrySetResult());
        attempt.TryStop((StopReason)reason, null, TimeSpan.Zero);

        Assert.True(attempt.Abandoned.IsCompleted);
        Assert.Null(attempt.Close());
        await seen.Task.WaitAsync(TimeSpan.FromSeconds(30));
    }
}
