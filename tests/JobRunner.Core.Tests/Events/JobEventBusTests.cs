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

    [Fact]
    public void Publish_ReachesTheJobsOwnWatchers_AndTheSubscribersWithoutAJob()
    {
        var bus = new JobEventBus();
        var time = new FakeTimeProvider();
        var (a, b, c) = (JobId.New(time), JobId.New(time), JobId.New(time));
        JobEvent Line(JobId id) => JobEvent.ForAttempt(JobEventKind.Log, id, "t", "w", default, 1);
        var watchA1 = bus.Subscribe(new JobEventFilter { JobId = a });
        using var watchA2 = bus.Subscribe(new JobEventFilter { JobId = a, Kinds = new HashSet<JobEventKind> { JobEventKind.Log } });
        using var watchAStates = bus.Subscribe(new JobEventFilter { JobId = a, Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } });
        using var watchB = bus.Subscribe(new JobEventFilter { JobId = b, Kinds = new HashSet<JobEventKind> { JobEventKind.Waiting } });
        var everything = bus.Subscribe(new JobEventFilter());
        using var logsOfT = bus.Subscribe(new JobEventFilter { Tenant = "t", Kinds = new HashSet<JobEventKind> { JobEventKind.Log } });

        bus.Publish(Line(a));
        bus.Publish(Line(b));
        bus.Publish(Line(c));
        watchA1.Dispose();
        watchA1.Dispose();
        bus.Publish(Line(a));

        static List<JobId> Read(JobEventBus.Subscription s)
        {
            var read = new List<JobId>();
            while (s.TryRead(out var e, out _))
            {
                read.Add(e.JobId);
            }

            return read;
        }

        Assert.Equal([a], Read(watchA1));
        Assert.Equal([a, a], Read(watchA2));
        Assert.Empty(Read(watchAStates));
        Assert.Empty(Read(watchB));
        Assert.Equal([a, b, c, a], Read(everything));
        Assert.Equal([a, b, c, a], Read(logsOfT));
        Assert.True(bus.IsWatched(Line(c)));
        Assert.True(bus.Waiting!.All);
        everything.Dispose();
        Assert.Equal([b], bus.Waiting!.Jobs);
        Assert.False(bus.Waiting.All);
    }

    [Fact]
    public void Subscribe_ManyJobWatchers_TrackItsWatchersAndInterest_WithoutWorkPerPairOfWatchers()
    {
        // Ten thousand WatchAsync(id): each subscription costs about the same whatever the number before it (it used to
        // copy every other subscriber and list every watched job again: hundreds of megabytes for these).
        const int Watchers = 10_000;
        var bus = new JobEventBus();
        var time = new FakeTimeProvider();
        var ids = Enumerable.Range(0, Watchers).Select(_ => JobId.New(time)).ToArray();
        var subscriptions = new JobEventBus.Subscription[Watchers];
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < Watchers; i++)
        {
            subscriptions[i] = bus.Subscribe(new JobEventFilter { JobId = ids[i] });
        }

        for (var i = 0; i < Watchers; i += 2)
        {
            subscriptions[i].Dispose();
        }

        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.True(allocated < Watchers * 4_096L, $"{allocated:N0} bytes for {Watchers:N0} subscriptions");
        Assert.Equal(ids.Where((_, i) => i % 2 == 1).Order(), bus.Waiting!.Jobs.Order());
        Assert.True(bus.IsWatched(JobEventKind.Log));
        Assert.False(bus.IsWatched(JobEvent.ForAttempt(JobEventKind.Log, ids[0], "t", "w", default, 1)));
        Assert.True(bus.IsWatched(JobEvent.ForAttempt(JobEventKind.Log, ids[1], "t", "w", default, 1)));
        foreach (var subscription in subscriptions)
        {
            subscription.Dispose();
        }

        Assert.False(bus.HasSubscribers);
        Assert.Null(bus.Waiting);
    }
}
