namespace JobRunner.Storage.Postgres.Tests;

/// <summary>Group commit without a database: when batches start and what they hold.</summary>
public sealed class BatcherTests
{
    [Fact]
    public async Task A_further_batch_starts_only_for_a_full_batch_while_one_is_in_flight()
    {
        var flushes = new List<(int Size, TaskCompletionSource Done)>();
        var started = new SemaphoreSlim(0);
        var batcher = new Batcher<int, int>(
            batch =>
            {
                var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                lock (flushes)
                {
                    flushes.Add((batch.Count, done));
                }

                started.Release();
                return done.Task.ContinueWith(
                    _ =>
                    {
                        foreach (var item in batch)
                        {
                            item.TrySetResult(item.Request);
                        }
                    },
                    TaskScheduler.Default);
            },
            maxBatch: 3,
            maxInFlight: 2);

        // Idle: the first request goes out at once, alone.
        var first = batcher.Enqueue(1);
        await started.WaitAsync();

        // Two more wait for the batch in flight: not a full batch, so no second batch starts.
        var waiting = new[] { batcher.Enqueue(2), batcher.Enqueue(3) };
        Assert.False(await started.WaitAsync(TimeSpan.Zero));

        // The third waiting request makes a full batch: a second batch goes out beside the first.
        var third = batcher.Enqueue(4);
        await started.WaitAsync();
        lock (flushes)
        {
            Assert.Equal([1, 3], flushes.Select(f => f.Size));
        }

        foreach (var flush in flushes.ToArray())
        {
            flush.Done.SetResult();
        }

        var results = await Task.WhenAll(first, waiting[0], waiting[1], third);
        Assert.Equal(Enumerable.Range(1, 4), results);
    }

    [Fact]
    public async Task Requests_added_together_go_out_together_and_full_batches_beside_each_other()
    {
        var sizes = new List<int>();
        var batcher = new Batcher<int, int>(
            batch =>
            {
                lock (sizes)
                {
                    sizes.Add(batch.Count);
                }

                foreach (var item in batch)
                {
                    item.TrySetResult(item.Request);
                }

                return Task.CompletedTask;
            },
            maxBatch: 3,
            maxInFlight: 2);

        // Idle: one batch for all of them (Enqueue one by one sends the first alone).
        var two = await Task.WhenAll(batcher.EnqueueMany([1, 2]));
        Assert.Equal([1, 2], two);
        Assert.Equal([2], sizes);

        // Seven: full batches of three, at most two in flight, then the rest.
        var seven = await Task.WhenAll(batcher.EnqueueMany([.. Enumerable.Range(1, 7)]));
        Assert.Equal(Enumerable.Range(1, 7), seven);
        lock (sizes)
        {
            Assert.Equal(9, sizes.Sum());
            Assert.All(sizes, size => Assert.InRange(size, 1, 3));
            Assert.Equal(2, sizes.Count(size => size == 3));
        }
    }

    [Fact]
    public async Task A_batch_closes_before_its_weight_passes_the_cap_and_a_heavier_request_goes_alone()
    {
        var sizes = new List<int[]>();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var started = new SemaphoreSlim(0);
        var batcher = new Batcher<int, int>(
            async batch =>
            {
                lock (sizes)
                {
                    sizes.Add(batch.Select(i => i.Request).ToArray());
                }

                started.Release();
                await gate.Task;
                foreach (var item in batch)
                {
                    item.TrySetResult(item.Request);
                }
            },
            maxBatch: 10,
            weigh: static w => w,
            maxWeight: 100);

        // The first goes out at once; the rest wait behind it, then go in batches of at most 100 by weight.
        int[] weights = [40, 40, 30, 250, 10, 90];
        var first = batcher.Enqueue(1);
        await started.WaitAsync();
        var all = weights.Select(batcher.Enqueue).Append(first).ToArray();
        gate.SetResult();
        await Task.WhenAll(all);

        Assert.Equal([[1], [40, 40], [30], [250], [10, 90]], sizes);
    }
}
