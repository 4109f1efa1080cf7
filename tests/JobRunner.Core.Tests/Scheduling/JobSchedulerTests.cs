using JobRunner.Events;
using JobRunner.Scheduling;
using JobRunner.Testing;
using Microsoft.Extensions.Options;

namespace JobRunner.Tests.Scheduling;

/// <summary>The slots' side of the scheduler: take or wait, wake-ups, limits given back in the same round, close.</summary>
public sealed class JobSchedulerTests : IDisposable
{
    private readonly FakeTimeProvider _time = new();
    private readonly SchedulerOptions _options = new();
    private JobScheduler? _scheduler;

    private JobScheduler Scheduler => _scheduler ??= new JobScheduler(
        Options.Create(_options), new TenantWeights(Options.Create(_options)), _time, Options.Create(new WorkerOptions { Slots = 2 }), new JobEventBus());

    public void Dispose() => _scheduler?.Dispose();

    [Fact]
    public async Task TakeOrWait_NothingHeld_WaitsUntilAJobArrives()
    {
        var slot = new ReusableSignal();
        Assert.False(Scheduler.TakeOrWait(null, slot, out _, out var wait));
        Assert.False(wait.IsCompleted);

        var job = Job();
        Assert.Equal(Admission.Held, Scheduler.Add(job));

        await wait;
        Assert.True(Scheduler.TakeOrWait(null, slot, out var taken, out _));
        Assert.Same(job, taken);
    }

    [Fact]
    public async Task TakeOrWait_ReleasingAKeyLimit_TakesTheJobItBlockedInTheSameRound()
    {
        var slot = new ReusableSignal();
        var other = new ReusableSignal();
        var first = Job(key: "k");
        var second = Job(key: "k");
        Scheduler.Add([first, second], new Admission[2]);
        Assert.True(Scheduler.TakeOrWait(null, slot, out var running, out _));
        Assert.Same(first, running);

        // The other slot finds only a job blocked by the key's limit of 1, and waits.
        Assert.False(Scheduler.TakeOrWait(null, other, out _, out var otherWait));

        // The first slot gives its key back and takes the blocked job, without waking anyone for it.
        Assert.True(Scheduler.TakeOrWait(first, slot, out var next, out _));
        Assert.Same(second, next);
        Assert.False(otherWait.IsCompleted);

        // Closing wakes the waiting slot, and no slot waits again or takes a job after it.
        Scheduler.Close();
        await otherWait;
        Assert.False(Scheduler.TakeOrWait(second, other, out _, out var afterClose));
        Assert.True(afterClose.IsCompleted);
    }

    [Fact]
    public async Task Add_ABatch_WakesOneWaitingSlotPerHeldJob()
    {
        var slots = new[] { new ReusableSignal(), new ReusableSignal(), new ReusableSignal() };
        var waits = new ValueTask[slots.Length];
        for (var i = 0; i < slots.Length; i++)
        {
            Assert.False(Scheduler.TakeOrWait(null, slots[i], out _, out waits[i]));
        }

        Scheduler.Add([Job(), Job()], new Admission[2]);

        // The stack of waiting slots wakes its two most recent; the third sleeps on.
        await waits[2];
        await waits[1];
        Assert.False(waits[0].IsCompleted);
        Scheduler.Close();
        await waits[0];
    }

    [Fact]
    public void TakeOrWait_NextWakeBeyondWhatATimerTakes_WaitsInsteadOfThrowing()
    {
        // One job a century: after the first, the next token is due far beyond a timer's ~49.7 days.
        _options.TenantRates["t"] = new RateLimit(PerSecond: 1.0 / (100.0 * 365 * 86_400));
        var slot = new ReusableSignal();
        Scheduler.Add([Job(), Job()], new Admission[2]);
        Assert.True(Scheduler.TakeOrWait(null, slot, out var first, out _));

        Assert.False(Scheduler.TakeOrWait(first, slot, out _, out var wait));
        Assert.False(wait.IsCompleted);

        // The capped timer wakes the slot early; it finds nothing to take yet and waits again.
        _time.Advance(TimeSpan.FromDays(50));
        Assert.True(wait.IsCompleted);
        Assert.False(Scheduler.TakeOrWait(null, slot, out _, out _));
    }

    private QueuedJob Job(string? key = null) => new()
    {
        Id = JobId.New(_time),
        Priority = 5,
        Tenant = "t",
        Workload = "w",
        ConcurrencyKey = key,
        EnqueuedAt = _time.GetUtcNow(),
    };
}
