using JobRunner.Events;
using JobRunner.InMemory;
using JobRunner.Testing;
using Microsoft.Extensions.Options;

namespace JobRunner.Tests.Events;

public sealed class JobEventBusTests
{
    [Fact]
    public void IsWatched_AnEvent_AsksEverySubscribersFilter()
    {
        var bus = new JobEventBus();
        var time = new FakeTimeProvider();
        var watched = JobId.New(time);
        JobEvent Log(JobId id, string tenant = "t") => JobEvent.ForAttempt(JobEventKind.Log, id, tenant, "w", default, 0);
        Assert.False(bus.IsWatched(Log(watched)));

        using (bus.Subscribe(new JobEventFilter { JobId = watched }))
        using (bus.Subscribe(new JobEventFilter { Tenant = "acme", Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } }))
        {
            Assert.True(bus.IsWatched(Log(watched)));
            Assert.False(bus.IsWatched(Log(JobId.New(time))));
            Assert.False(bus.IsWatched(Log(JobId.New(time), tenant: "acme")));
        }

        Assert.False(bus.IsWatched(Log(watched)));
    }

    [Fact]
    public void IsWatched_FollowsTheSubscribersKinds()
    {
        var bus = new JobEventBus();
        Assert.False(bus.IsWatched(JobEventKind.StateChanged));

        using (bus.Subscribe(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.CancellationRequested } }))
        {
            Assert.True(bus.HasSubscribers);
            Assert.True(bus.IsWatched(JobEventKind.CancellationRequested));
            Assert.False(bus.IsWatched(JobEventKind.StateChanged));
            Assert.False(bus.IsWatched(JobEventKind.Log));

            using (bus.Subscribe(new JobEventFilter { JobId = JobId.New(TimeProvider.System) }))
            {
                Assert.All(Enum.GetValues<JobEventKind>(), kind => Assert.True(bus.IsWatched(kind)));
            }

            Assert.False(bus.IsWatched(JobEventKind.StateChanged));
        }

        Assert.False(bus.IsWatched(JobEventKind.CancellationRequested));
    }

    [Fact]
    public async Task Store_BuildsStateEventsOnlyForAWatcherOfThem()
    {
        var time = new FakeTimeProvider();
        var bus = new JobEventBus();
        var store = new InMemoryJobStore(time, bus, Options.Create(new InMemoryStoreOptions()));
        using var cancellations = bus.Subscribe(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.CancellationRequested } });
        using var states = bus.Subscribe(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } });
        var job = new JobRecord { Id = JobId.New(time), Request = new JobRequest("work"), State = JobState.Queued, CreatedAt = time.GetUtcNow(), UpdatedAt = time.GetUtcNow() };

        await store.InsertAsync(job, default);
        states.Dispose();
        await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(30), default);
        await store.RequestCancellationAsync(job.Id, "stop", default);

        Assert.True(states.Reader.TryRead(out var inserted));
        Assert.Equal(JobState.Queued, inserted.State);
        Assert.False(states.Reader.TryRead(out _));
        Assert.True(cancellations.Reader.TryRead(out var cancel));
        Assert.Equal(JobEventKind.CancellationRequested, cancel.Kind);
    }

    [Fact]
    public async Task SubscribeAsync_ReaderFallsBehind_ThrowsDroppedAtTheGap()
    {
        var bus = new JobEventBus();
        var id = JobId.New(new FakeTimeProvider());
        JobEvent Line(int n) => JobEvent.ForAttempt(JobEventKind.Log, id, "t", "w", default, 1, message: n.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var events = bus.SubscribeAsync(new JobEventFilter(), default).GetAsyncEnumerator();
        await using (events)
        {
            var first = events.MoveNextAsync();
            bus.Publish(Line(0));
            Assert.True(await first);
            Assert.Equal("0", events.Current.Message);

            // The reader holds event 0 and takes no more while Capacity + 3 are published: the 3 oldest are dropped.
            for (var n = 1; n <= JobEventBus.Capacity + 3; n++)
            {
                bus.Publish(Line(n));
            }

            var e = await Assert.ThrowsAsync<JobEventsDroppedException>(() => events.MoveNextAsync().AsTask());
            Assert.Equal(3, e.Dropped);
            Assert.True(e.IsTransient);
            Assert.Contains("watch again", e.Message, StringComparison.Ordinal);
        }
    }
}
