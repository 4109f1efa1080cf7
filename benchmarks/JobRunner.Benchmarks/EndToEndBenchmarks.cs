using System.Threading.Channels;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using JobRunner;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Benchmarks;

/// <summary>
/// N no-op jobs submitted and completed end to end through the in-memory path (validate, store record, queue, lease
/// with a fence token, in-process engine with a DI scope, fenced completion), against a raw bounded Channel pipeline
/// with the same number of consumers, in the same run; and the same with the workload registered as a singleton (no DI
/// scope per attempt). Results are per job ([OperationsPerInvoke]).
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class EndToEndBenchmarks
{
    public const int Jobs = 200_000;

    private Harness _harness = null!;

    [Params(8)]
    public int Slots { get; set; }

    [GlobalSetup]
    public async Task SetupAsync()
        => _harness = await Harness.StartAsync(runner =>
        {
            runner.Services.AddSingleton<SingletonNoOpWorkload>();
            runner.ConfigureWorker(w => w.Slots = Slots)
                .AddWorkload<NoOpWorkload>("noop")
                .AddWorkload<SingletonNoOpWorkload>("noop-singleton");
        });

    [GlobalCleanup]
    public async Task CleanupAsync() => await _harness.DisposeAsync();

    [Benchmark(Baseline = true, OperationsPerInvoke = Jobs, Description = "raw bounded Channel<T>")]
    public async Task RawChannel()
    {
        var channel = Channel.CreateBounded<RawJob>(new BoundedChannelOptions(Slots * 4) { SingleWriter = true });
        var consumers = new Task[Slots];
        for (var i = 0; i < consumers.Length; i++)
        {
            consumers[i] = Task.Run(async () =>
            {
                var reader = channel.Reader;
                while (await reader.WaitToReadAsync())
                {
                    while (reader.TryRead(out var job))
                    {
                        await job.RunAsync();
                    }
                }
            });
        }

        for (var i = 0; i < Jobs; i++)
        {
            await channel.Writer.WriteAsync(new RawJob(i));
        }

        channel.Writer.Complete();
        await Task.WhenAll(consumers);
    }

    [Benchmark(OperationsPerInvoke = Jobs, Description = "JobRunner in-memory, submit → completed")]
    public async Task JobRunnerInMemory()
    {
        await _harness.RunAsync(new JobRequest("noop"), Jobs);
    }

    [Benchmark(OperationsPerInvoke = Jobs, Description = "JobRunner in-memory, singleton workload")]
    public async Task JobRunnerInMemorySingleton()
    {
        await _harness.RunAsync(new JobRequest("noop-singleton"), Jobs);
    }

    public sealed class SingletonNoOpWorkload : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }

    public sealed class NoOpWorkload : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }

    private sealed record RawJob(int Id)
    {
        public ValueTask RunAsync() => ValueTask.CompletedTask;
    }
}
