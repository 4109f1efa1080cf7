using JobRunner.InMemory;
using JobRunner.Testing;

namespace JobRunner.Tests.InMemory;

public sealed class InMemoryJobQueueTests : IDisposable
{
    private static readonly TimeSpan Visibility = TimeSpan.FromSeconds(30);
    private readonly FakeTimeProvider _time = new();
    private readonly InMemoryJobQueue _queue;

    public InMemoryJobQueueTests()
    {
        _queue = new InMemoryJobQueue(_time);
    }

    public void Dispose() => _queue.Dispose();

    private QueuedJob Item(int priority = 5, DateTimeOffset? dueAt = null, string tenant = "t") => new()
    {
        Id = JobId.New(_time),
        Priority = priority,
        Tenant = tenant,
        Workload = "w",
        EnqueuedAt = _time.GetUtcNow(),
        DueAt = dueAt,
    };

    private async Task<QueuedJob[]> TakeAsync(int max)
    {
        var buffer = new QueuedJob[max];
        var n = await _queue.DequeueAsync(buffer, Visibility, default);
        return buffer[..n];
    }

    [Fact]
    public async Task DequeueAsync_HigherPriorityFirst_FifoWithinPriority()
    {
        var low = Item(1);
        var normal1 = Item(5);
        var urgent = Item(10);
        var normal2 = Item(5);
        foreach (var item in new[] { low, normal1, urgent, normal2 })
        {
            await _queue.EnqueueAsync(item, default);
        }

        var taken = await TakeAsync(10);

        Assert.Equal([urgent, normal1, normal2, low], taken);
    }

    [Fact]
    public async Task DequeueAsync_WithinAPriority_TenantsTakeTurns()
    {
        var a = Enumerable.Range(0, 3).Select(_ => Item(tenant: "a")).ToList();
        var b = Enumerable.Range(0, 2).Select(_ => Item(tenant: "b")).ToList();
        foreach (var item in a.Concat(b))
        {
            await _queue.EnqueueAsync(item, default);
        }

        Assert.Equal([a[0], b[0], a[1], b[1], a[2]], await TakeAsync(10));
    }

    [Fact]
    public async Task DequeueAsync_ATenantThatRefillsAfterEachTake_TakesTurnsWithABusyOne()
    {
        // Equal weights: the busy tenant has a backlog; the other has one job at a time and adds the next as soon as its
        // last is taken. It must not go first every time (a tenant re-created at the band's pass would).
        foreach (var item in Enumerable.Range(0, 8).Select(_ => Item(tenant: "busy")))
        {
            await _queue.EnqueueAsync(item, default);
        }

        await _queue.EnqueueAsync(Item(tenant: "trickle"), default);
        var taken = new List<string>();
        for (var i = 0; i < 8; i++)
        {
            var job = (await TakeAsync(1)).Single();
            taken.Add(job.Tenant);
            if (job.Tenant == "trickle")
            {
                await _queue.EnqueueAsync(Item(tenant: "trickle"), default);
            }
        }

        Assert.Equal(["busy", "trickle", "busy", "trickle", "busy", "trickle", "busy", "trickle"], taken);
    }

    [Fact]
    public async Task DequeueAsync_ManyShortLivedTenants_TheBandKeepsABoundedNumber()
    {
        for (var i = 0; i < 1000; i++)
        {
            await _queue.EnqueueAsync(Item(tenant: "tenant-" + i), default);
            Assert.Single(await TakeAsync(1));
        }

        Assert.InRange(_queue.TenantCount, 0, 128);
    }

    [Fact]
    public async Task RemoveDelayed_RemovesOnlyThatJobsDelayedEntries()
    {
        var nextWeek = Item(dueAt: _time.GetUtcNow().AddDays(7));
        var tomorrow = Item(dueAt: _time.GetUtcNow().AddDays(1));
        await _queue.EnqueueAsync(nextWeek, default);
        await _queue.EnqueueAsync(tomorrow, default);

        Assert.Equal([nextWeek], _queue.RemoveDelayed(nextWeek.Id));
        Assert.Null(_queue.RemoveDelayed(nextWeek.Id));
        Assert.Equal(1, _queue.Depth);

        var waiting = TakeAsync(10);
        _time.Advance(TimeSpan.FromDays(1));
        Assert.Equal([tomorrow], await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task DequeueAsync_TakesAtMostBufferLength()
    {
        for (var i = 0; i < 5; i++)
        {
            await _queue.EnqueueAsync(Item(), default);
        }

        Assert.Equal(2, (await TakeAsync(2)).Length);
        Assert.Equal(3, (await TakeAsync(10)).Length);
    }

    [Fact]
    public async Task DequeueAsync_Empty_WaitsUntilEnqueue()
    {
        var waiting = TakeAsync(4);
        Assert.False(waiting.IsCompleted);

        var item = Item();
        await _queue.EnqueueAsync(item, default);

        Assert.Equal([item], await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task DequeueAsync_Cancelled_Throws()
    {
        using var cts = new CancellationTokenSource();
        var waiting = _queue.DequeueAsync(new QueuedJob[1], Visibility, cts.Token).AsTask();

        await cts.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);
    }

    [Fact]
    public async Task EnqueueAsync_DelayedJob_IsHeldUntilDue()
    {
        var delayed = Item(priority: 10, dueAt: _time.GetUtcNow().AddMinutes(1));
        var now = Item(priority: 1);
        await _queue.EnqueueAsync(delayed, default);
        await _queue.EnqueueAsync(now, default);

        Assert.Equal([now], await TakeAsync(10));
        await _queue.AcknowledgeAsync([now], default);
        var waiting = TakeAsync(10);
        _time.Advance(TimeSpan.FromSeconds(59));
        Assert.False(waiting.IsCompleted);
        _time.Advance(TimeSpan.FromSeconds(1));

        Assert.Equal([delayed], await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task DelayedJobs_BecomeReadyInDueOrder()
    {
        var later = Item(dueAt: _time.GetUtcNow().AddSeconds(20));
        var sooner = Item(dueAt: _time.GetUtcNow().AddSeconds(10));
        await _queue.EnqueueAsync(later, default);
        await _queue.EnqueueAsync(sooner, default);

        _time.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal([sooner], await TakeAsync(10));
        _time.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal([later], await TakeAsync(10));
    }

    [Fact]
    public async Task TakenJob_NotAcknowledged_IsDeliveredAgainAfterVisibility()
    {
        var item = Item();
        await _queue.EnqueueAsync(item, default);
        await TakeAsync(1);

        _time.Advance(Visibility);

        Assert.Equal([item], await TakeAsync(1));
    }

    [Fact]
    public async Task TakenJob_Acknowledged_IsNotDeliveredAgain()
    {
        var item = Item();
        await _queue.EnqueueAsync(item, default);
        await TakeAsync(1);
        await _queue.AcknowledgeAsync([item], default);

        _time.Advance(Visibility * 2);

        Assert.Equal(0, _queue.Depth);
    }

    [Fact]
    public async Task ExtendAsync_KeepsJobInvisible()
    {
        var item = Item();
        await _queue.EnqueueAsync(item, default);
        await TakeAsync(1);
        _time.Advance(TimeSpan.FromSeconds(20));
        await _queue.ExtendAsync([item], Visibility, default);
        _time.Advance(TimeSpan.FromSeconds(20));

        var waiting = TakeAsync(1);
        Assert.False(waiting.IsCompleted);
        _time.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal([item], await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task ReturnAsync_MakesJobVisibleAtOnce()
    {
        var item = Item();
        await _queue.EnqueueAsync(item, default);
        await TakeAsync(1);

        await _queue.ReturnAsync([item], default);

        Assert.Equal([item], await TakeAsync(1));
    }

    [Fact]
    public async Task AcknowledgeAsync_OldDelivery_DoesNotRemoveNewerDeliveryOfSameJob()
    {
        var first = Item();
        await _queue.EnqueueAsync(first, default);
        await TakeAsync(1);
        var retry = first with { EnqueuedAt = _time.GetUtcNow() };
        await _queue.EnqueueAsync(retry, default);
        await TakeAsync(1);

        await _queue.AcknowledgeAsync([first], default);
        _time.Advance(Visibility);

        Assert.Equal([retry], await TakeAsync(1));
    }

    [Fact]
    public async Task DequeueAsync_CancelledWaiter_DoesNotSwallowTheNextWakeUp()
    {
        using var cts = new CancellationTokenSource();
        var cancelled = _queue.DequeueAsync(new QueuedJob[1], Visibility, cts.Token).AsTask();
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled);
        var live = TakeAsync(1);

        var item = Item();
        await _queue.EnqueueAsync(item, default);

        Assert.Equal([item], await live.WaitAsync(TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task EnqueueAsync_DueBeyondTimerLimit_IsHeldAndReleasedInSteps()
    {
        var item = Item(dueAt: _time.GetUtcNow().AddDays(120));
        await _queue.EnqueueAsync(item, default);
        var waiting = TakeAsync(1);

        _time.Advance(TimeSpan.FromDays(119));
        Assert.False(waiting.IsCompleted);
        _time.Advance(TimeSpan.FromDays(1));

        Assert.Equal([item], await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
    }
}
