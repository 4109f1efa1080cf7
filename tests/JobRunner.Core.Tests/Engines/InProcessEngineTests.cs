using JobRunner.Configuration;
using JobRunner.Engines;
using JobRunner.Worker;
using Microsoft.Extensions.DependencyInjection;
using NSubstitute;

namespace JobRunner.Core.Tests.Engines;

public sealed class InProcessEngineTests : IDisposable
{
    private readonly ServiceProvider _host = new ServiceCollection().AddJobRunner(_ => { }).BuildServiceProvider();

    public void Dispose() => _host.Dispose();

    [Fact]
    public async Task Singleton_WorkloadThatNeverReadsServices_CreatesNoScope()
    {
        var (services, scopes, _) = Substitutes(new ReadingWorkload(reads: 0));
        var engine = new InProcessEngine<ReadingWorkload>(services, singleton: true);
        using var attempt = NewAttempt(services);

        await engine.ExecuteAsync(attempt, CancellationToken.None);

        scopes.DidNotReceive().CreateScope();
    }

    [Fact]
    public async Task Singleton_ServicesReadTwice_OneScopeCreatedOnFirstRead_DisposedAtEnd()
    {
        var (services, scopes, scope) = Substitutes(new ReadingWorkload(reads: 2));
        var engine = new InProcessEngine<ReadingWorkload>(services, singleton: true);
        using var attempt = NewAttempt(services);

        await engine.ExecuteAsync(attempt, CancellationToken.None);

        scopes.Received(1).CreateScope();
        scope.Received(1).Dispose();
        Assert.Throws<ObjectDisposedException>(() => attempt.Services.GetService(typeof(object)));
    }

    [Fact]
    public async Task NotSingleton_WorkloadResolvedFromTheAttemptsScope_DisposedAtEnd()
    {
        var workload = new ReadingWorkload(reads: 0);
        var (services, scopes, scope) = Substitutes(workload);
        var engine = new InProcessEngine<ReadingWorkload>(services, singleton: false);
        using var attempt = NewAttempt(services);

        await engine.ExecuteAsync(attempt, CancellationToken.None);

        scopes.Received(1).CreateScope();
        scope.ServiceProvider.Received(1).GetService(typeof(ReadingWorkload));
        services.DidNotReceive().GetService(typeof(ReadingWorkload));
        scope.Received(1).Dispose();
        Assert.Equal(1, workload.Runs);
    }

    [Theory]
    [InlineData(ServiceLifetime.Singleton, true)]
    [InlineData(ServiceLifetime.Scoped, false)]
    [InlineData(ServiceLifetime.Transient, false)]
    public void AddWorkload_TheLastRegistrationDecides_EvenWhenMadeAfterAddWorkload(ServiceLifetime lifetime, bool singleton)
    {
        IServiceCollection collection = new ServiceCollection();
        collection.AddJobRunner(r => r.AddWorkload<ReadingWorkload>("reader"));
        collection.Add(new ServiceDescriptor(typeof(ReadingWorkload), _ => new ReadingWorkload(reads: 0), lifetime));
        using var provider = collection.BuildServiceProvider();

        var engine = provider.GetRequiredService<WorkloadRegistry>().Find("reader")!.Engine;

        Assert.Equal(singleton, Assert.IsType<InProcessEngine<ReadingWorkload>>(engine).Singleton);
    }

    /// <summary>An attempt of a worker whose root services are <paramref name="services"/> (its scopes come from there).</summary>
    private ActiveAttempt NewAttempt(IServiceProvider services)
        => new(
            QueuedJob.For(JobId.New(TimeProvider.System), new JobRequest("reader"), DateTimeOffset.UnixEpoch, dueAt: null),
            ActivatorUtilities.CreateInstance<JobWorker>(_host, services));

    private static (IServiceProvider Services, IServiceScopeFactory Scopes, IServiceScope Scope) Substitutes(ReadingWorkload workload)
    {
        var scoped = Substitute.For<IServiceProvider>();
        scoped.GetService(typeof(ReadingWorkload)).Returns(workload);
        scoped.GetService(typeof(object)).Returns(new object());
        var scope = Substitute.For<IServiceScope>();
        scope.ServiceProvider.Returns(scoped);
        var scopes = Substitute.For<IServiceScopeFactory>();
        scopes.CreateScope().Returns(scope);
        var services = Substitute.For<IServiceProvider>();
        services.GetService(typeof(IServiceScopeFactory)).Returns(scopes);
        services.GetService(typeof(ReadingWorkload)).Returns(workload);
        return (services, scopes, scope);
    }

    /// <summary>Reads <see cref="WorkloadContext.Services"/> <c>reads</c> times; every read must give the same provider.</summary>
    public sealed class ReadingWorkload(int reads) : IWorkload
    {
        public int Runs { get; private set; }

        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
        {
            Runs++;
            IServiceProvider? first = null;
            for (var i = 0; i < reads; i++)
            {
                var current = context.Services;
                Assert.Same(first ?? current, current);
                first = current;
            }

            return ValueTask.CompletedTask;
        }
    }
}
