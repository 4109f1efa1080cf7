using JobRunner;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;

namespace JobRunner.Benchmarks;

/// <summary>A JobRunner service provider with its worker started, and a counter of completions at the store.</summary>
internal sealed class Harness : IAsyncDisposable
{
    private readonly ServiceProvider _services;
    private readonly IHostedService _worker;

    private Harness(ServiceProvider services, CompletionCounter counter)
    {
        _services = services;
        Counter = counter;
        Client = services.GetRequiredService<IJobClient>();
        _worker = services.GetServices<IHostedService>().Single();
    }

    public IJobClient Client { get; }

    public CompletionCounter Counter { get; }

    public static async Task<Harness> StartAsync(Action<JobRunnerBuilder> configure, bool startWorker = true)
    {
        var services = new ServiceCollection();
        services.AddJobRunner(runner =>
        {
            // BENCH_KEEP=n: how many finished jobs the in-memory store keeps (default 100,000), to measure what retention costs.
            if (Environment.GetEnvironmentVariable("BENCH_KEEP") is { } keep)
            {
                runner.UseInMemory(o => o.MaxFinishedJobs = int.Parse(keep, System.Globalization.CultureInfo.InvariantCulture));
            }

            configure(runner);
        });

        // Count completions at the store, after the fenced write, without touching the library.
        var inner = services.Last(d => d.ServiceType == typeof(IJobStore));
        var counter = new CompletionCounter();
        services.Replace(ServiceDescriptor.Singleton<IJobStore>(sp => new CountingStore((IJobStore)inner.ImplementationFactory!(sp), counter)));
        var harness = new Harness(services.BuildServiceProvider(), counter);
        if (startWorker)
        {
            await harness._worker.StartAsync(CancellationToken.None);
        }

        return harness;
    }

    /// <summary>Submits <paramref name="count"/> copies of <paramref name="request"/> and waits until all completed.</summary>
    public async Task RunAsync(JobRequest request, int count)
    {
        var done = Counter.Expect(count);
        for (var i = 0; i < count; i++)
        {
            await Client.SubmitAsync(request);
        }

        await done;
    }

    /// <summary>Starts the worker of a harness started with <c>startWorker: false</c>.</summary>
    public Task StartWorkerAsync() => _worker.StartAsync(CancellationToken.None);

    public async ValueTask DisposeAsync()
    {
        await _worker.StopAsync(CancellationToken.None);
        await _services.DisposeAsync();
    }
}
