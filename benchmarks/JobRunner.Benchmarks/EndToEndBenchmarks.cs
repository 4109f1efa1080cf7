using System.Threading.Channels;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using JobRunner;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;

namespace JobRunner.Benchmarks;

/// <summary>
/// N no-op jobs submitted and completed end to end through the in-memory path (validate, store record, queue, lease
/// with a fence token, in-process engine with a DI scope, fenced completion), against a raw bounded Channel pipeline
/// with the same number of consumers, in the same run. Results are per job ([OperationsPerInvoke]).
/// </summary>
[MemoryDiagnoser]
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class EndToEndBenchmarks
{
    public const int Jobs = 200_000;

    private ServiceProvider _services = null!;
    private IJobClient _client = null!;
    private IHostedService _worker = null!;
    private CompletionCounter _counter = null!;

    [Params(8)]
    public int Slots { get; set; }

    [GlobalSetup]
    public async Task SetupAsync()
    {
        var services = new ServiceCollection();
        services.AddJobRunner(runner => runner
            .ConfigureWorker(w => w.Slots = Slots)
            .AddWorkload<NoOpWorkload>("noop"));

        // Count completions at the store, after the fenced write, without touching the library.
        var inner = services.Last(d => d.ServiceType == typeof(IJobStore));
        _counter = new CompletionCounter();
        services.Replace(ServiceDescriptor.Singleton<IJobStore>(sp => new CountingStore((IJobStore)inner.ImplementationFactory!(sp), _counter)));

        _services = services.BuildServiceProvider();
        _client = _services.GetRequiredService<IJobClient>();
        _worker = _services.GetServices<IHostedService>().Single();
        await _worker.StartAsync(CancellationToken.None);
    }

    [GlobalCleanup]
    public async Task CleanupAsync()
    {
        await _worker.StopAsync(CancellationToken.None);
        await _services.DisposeAsync();
    }

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
        var done = _counter.Expect(Jobs);
        var request = new JobRequest("noop");
        for (var i = 0; i < Jobs; i++)
        {
            await _client.SubmitAsync(request);
        }

        await done;
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
