using JobRunner.Testing;

namespace JobRunner.Tests.Testing;

public sealed class FakeTimeProviderTests
{
    [Fact]
    public void Advance_FiresTimersInDueOrder_AtTheirDueTime()
    {
        var time = new FakeTimeProvider();
        var start = time.GetUtcNow();
        var fired = new List<(string Name, TimeSpan At)>();
        using var late = time.CreateTimer(_ => fired.Add(("late", time.GetUtcNow() - start)), null, TimeSpan.FromSeconds(20), Timeout.InfiniteTimeSpan);
        using var early = time.CreateTimer(_ => fired.Add(("early", time.GetUtcNow() - start)), null, TimeSpan.FromSeconds(10), Timeout.InfiniteTimeSpan);

        time.Advance(TimeSpan.FromSeconds(30));

        Assert.Equal([("early", TimeSpan.FromSeconds(10)), ("late", TimeSpan.FromSeconds(20))], fired);
        Assert.Equal(start + TimeSpan.FromSeconds(30), time.GetUtcNow());
    }

    [Fact]
    public void PeriodicTimer_FiresEveryPeriod_UntilDisposed()
    {
        var time = new FakeTimeProvider();
        var count = 0;
        var timer = time.CreateTimer(_ => count++, null, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(5));

        time.Advance(TimeSpan.FromSeconds(16));
        timer.Dispose();
        time.Advance(TimeSpan.FromSeconds(16));

        Assert.Equal(3, count);
        Assert.Equal(0, time.TimerCount);
    }

    [Fact]
    public void Change_ToInfinite_StopsTimer()
    {
        var time = new FakeTimeProvider();
        var count = 0;
        using var timer = time.CreateTimer(_ => count++, null, TimeSpan.FromSeconds(5), Timeout.InfiniteTimeSpan);

        timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        time.Advance(TimeSpan.FromSeconds(10));

        Assert.Equal(0, count);
    }

    [Fact]
    public async Task TaskDelay_CompletesOnlyWhenAdvanced()
    {
        var time = new FakeTimeProvider();

        var delay = Task.Delay(TimeSpan.FromMinutes(1), time);
        Assert.False(delay.IsCompleted);
        time.Advance(TimeSpan.FromMinutes(1));

        await delay.WaitAsync(TimeSpan.FromSeconds(30));
    }

    [Fact]
    public void SetUtcNow_Backwards_Throws()
    {
        var time = new FakeTimeProvider();

        Assert.Throws<ArgumentOutOfRangeException>(() => time.SetUtcNow(time.GetUtcNow().AddSeconds(-1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => time.Advance(TimeSpan.FromSeconds(-1)));
    }

    [Fact]
    public void GetTimestamp_MovesWithTheClock()
    {
        var time = new FakeTimeProvider();
        var before = time.GetTimestamp();

        time.Advance(TimeSpan.FromSeconds(2));

        Assert.Equal(TimeSpan.FromSeconds(2), time.GetElapsedTime(before));
    }
}
