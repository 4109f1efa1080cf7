using System.Text;
using JobRunner.Events;
using JobRunner.InMemory;
using JobRunner.Testing;
using JobRunner.Tests.Support;
using JobRunner.Worker;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace JobRunner.Tests.Worker;

/// <summary>UseCheckpointStore: attempts read and write checkpoints through an <see cref="ICheckpointStore"/>.</summary>
public sealed class CheckpointStoreTests
{
    [Fact]
    public async Task Worker_SavesToTheCheckpointStore_AndTheRetryStartsFromIt()
    {
        var checkpoints = new FencedCheckpoints();
        await using var host = new TestHost(r => r.UseCheckpointStore(_ => checkpoints));
        host.Behavior.Run = async (context, ct) =>
        {
            if (context.Attempt == 1)
            {
                await context.SaveCheckpointAsync(Encoding.UTF8.GetBytes("5"), ct);
                throw new InvalidOperationException("crashed at item 6");
            }

            await context.SaveCheckpointAsync(Encoding.UTF8.GetBytes("10"), ct);
        };
        await host.StartAsync();
        var events = host.Client.WatchAsync(new JobEventFilter()).GetAsyncEnumerator();
        var moved = events.MoveNextAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Retry = RetryPolicy.Fixed(TimeSpan.Zero, maxAttempts: 3) });
        var job = await host.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal([(1, null), (2, "5")], host.Behavior.Started.Select(s => (s.Attempt, s.Checkpoint)));
        Assert.Null(job.Checkpoint);
        var stored = await checkpoints.LoadAsync(id, default);
        Assert.Equal((job.Attempts[1].FenceToken, 2, "10"), (stored!.FenceToken, stored.Attempt, Encoding.UTF8.GetString(stored.Data.Span)));

        var checkpointed = new List<int>();
        while (await moved && checkpointed.Count < 2)
        {
            if (events.Current.Kind == JobEventKind.Checkpointed)
            {
                Assert.Equal(JobState.Running, events.Current.State);
                checkpointed.Add(events.Current.Attempt);
            }

            moved = events.MoveNextAsync();
        }

        Assert.Equal([1, 2], checkpointed);
        await events.DisposeAsync();
    }

    [Fact]
    public async Task Worker_WhenTheCheckpointStoreFailsToLoad_FailsTheAttemptAndRetries()
    {
        var checkpoints = new FencedCheckpoints { FailLoads = 1 };
        await using var host = new TestHost(r => r.UseCheckpointStore(_ => checkpoints));
        await host.StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work") { Retry = RetryPolicy.Fixed(TimeSpan.Zero, maxAttempts: 3) });
        var job = await host.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal([AttemptOutcome.Failed, AttemptOutcome.Succeeded], job.Attempts.Select(a => a.Outcome!.Value));
        Assert.Contains("checkpoint store is down", job.Attempts[0].Error, StringComparison.Ordinal);
        Assert.Equal([2], host.Behavior.Started.Select(s => s.Attempt));
    }

    [Fact]
    public async Task Save_WithALeaseTakenOver_IsRefusedBeforeTheCheckpointStoreIsWritten()
    {
        var time = new FakeTimeProvider();
        var store = new InMemoryJobStore(time, new JobEventBus(), Options.Create(new InMemoryStoreOptions()));
        var checkpoints = new FencedCheckpoints();
        var router = new CheckpointRouter(store, checkpoints, new JobEventBus(), time, TimeSpan.FromSeconds(30));
        var job = new JobRecord { Id = JobId.New(time), Request = new JobRequest("work"), State = JobState.Queued, CreatedAt = time.GetUtcNow(), UpdatedAt = time.GetUtcNow() };
        await store.InsertAsync(job, default);
        var stale = (await store.TryAcquireLeaseAsync(job.Id, "dead", TimeSpan.FromSeconds(30), default))!;
        time.Advance(TimeSpan.FromSeconds(31));
        await store.ReclaimExpiredLeasesAsync(default);
        var current = (await store.TryAcquireLeaseAsync(job.Id, "alive", TimeSpan.FromSeconds(30), default))!;
        await router.SaveAsync(current, Encoding.UTF8.GetBytes("new"), default);

        await Assert.ThrowsAsync<StaleFenceTokenException>(() => router.SaveAsync(stale, Encoding.UTF8.GetBytes("old"), default).AsTask());

        Assert.Equal(1, checkpoints.Saves);
        Assert.Equal("new", Encoding.UTF8.GetString((await router.LoadAsync(current, default))!.Value.Span));
    }

    [Fact]
    public async Task UseCheckpointStore_RegistersTheStore()
    {
        var checkpoints = new FencedCheckpoints();
        await using var host = new TestHost(r => r.UseCheckpointStore(_ => checkpoints));

        Assert.Same(checkpoints, host.Services.GetRequiredService<ICheckpointStore>());
    }

    /// <summary>Keeps the highest fence's checkpoint per job, as a real checkpoint store does.</summary>
    private sealed class FencedCheckpoints : ICheckpointStore
    {
        private readonly Dictionary<JobId, StoredCheckpoint> _stored = [];

        public int FailLoads { get; set; }

        public int Saves { get; private set; }

        public ValueTask SaveAsync(JobLease lease, ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken)
        {
            lock (_stored)
            {
                if (_stored.TryGetValue(lease.JobId, out var newest) && newest.FenceToken > lease.FenceToken)
                {
                    throw new StaleFenceTokenException(lease.JobId, lease.FenceToken, newest.FenceToken, "a newer checkpoint exists");
                }

                _stored[lease.JobId] = new StoredCheckpoint(lease.FenceToken, lease.Attempt, checkpoint.ToArray());
                Saves++;
            }

            return ValueTask.CompletedTask;
        }

        public ValueTask<StoredCheckpoint?> LoadAsync(JobId jobId, CancellationToken cancellationToken)
        {
            lock (_stored)
            {
                if (FailLoads > 0)
                {
                    FailLoads--;
                    throw new IOException("The checkpoint store is down.");
                }

                return ValueTask.FromResult(_stored.GetValueOrDefault(jobId));
            }
        }
    }
}
