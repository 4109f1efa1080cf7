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
        var engine = new InProcessEngine<ReadingWorkload>(services, WorkloadActivation.Singleton);
        using var attempt = NewAttempt(services);

        await engine.ExecuteAsync(attempt, CancellationToken.None);

        scopes.DidNotReceive().CreateScope();
    }

    [Fact]
    public async Task Singleton_ServicesReadTwice_OneScopeCreatedOnFirstRead_DisposedAtEnd()
    {
        var (services, scopes, scope) = Substitutes(new ReadingWorkload(reads: 2));
        var engine = new InProcessEngine<ReadingWorkload>(services, WorkloadActivation.Singleton);
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
        var engine = new InProcessEngine<ReadingWorkload>(services, WorkloadActivation.Scoped);
        using var attempt = NewAttempt(services);

        await engine.ExecuteAsync(attempt, CancellationToken.None);

        scopes.Received(1).CreateScope();
        scope.ServiceProvider.Received(1).GetService(typeof(ReadingWorkload));
        services.DidNotReceive().GetService(typeof(ReadingWorkload));
        scope.Received(1).Dispose();
        Assert.Equal(1, workload.Runs);
    }

    [Fact]
    public async Task Constructed_NewInstancePerAttemptFromTheRootsSingletons_NoScope_DisposedAtEnd()
    {
        var (services, scopes, _) = Substitutes(new ReadingWorkload(reads: 0));
        var dependency = new Dependency();
        services.GetService(typeof(Dependency)).Returns(dependency);
        var engine = new InProcessEngine<DisposableWorkload>(services, WorkloadActivation.Constructed);
        var built = new List<DisposableWorkload>();
        DisposableWorkload.Built = built.Add;

        for (var i = 0; i < 2; i++)
        {
            using var attempt = NewAttempt(services);
            await engine.ExecuteAsync(attempt, CancellationToken.None);
        }

        scopes.DidNotReceive().CreateScope();
        services.DidNotReceive().GetService(typeof(DisposableWorkload));
        Assert.Equal(2, built.Count);
        Assert.NotSame(built[0], built[1]);
        Assert.All(built, w => Assert.Same(dependency, w.Dependency));
        Assert.All(built, w => Assert.Equal((1, true), (w.Runs, w.Disposed)));
    }

    [Fact]
    public async Task Constructed_ServicesRead_ScopeCreatedLazily_ScopeDisposedBeforeTheWorkload()
    {
        var (services, scopes, scope) = Substitutes(new ReadingWorkload(reads: 0));
        services.GetService(typeof(Dependency)).Returns(new Dependency());
        var engine = new InProcessEngine<DisposableWorkload>(services, WorkloadActivation.Constructed);
        var order = new List<string>();
        scope.When(s => s.Dispose()).Do(_ => order.Add("scope"));
        DisposableWorkload.Built = w =>
        {
            w.ReadServices = true;
            w.OnDispose = () => order.Add("workload");
        };
        using var attempt = NewAttempt(services);

        await engine.ExecuteAsync(attempt, CancellationToken.None);

        scopes.Received(1).CreateScope();
        // The container's order: what the workload resolved later goes first.
        Assert.Equal(["scope", "workload"], order);
    }

    [Fact]
    public async Task Constructed_WorkloadThrows_StillDisposed_ScopeClosed_ExceptionUnchanged()
    {
        var (services, _, scope) = Substitutes(new ReadingWorkload(reads: 0));
        services.GetService(typeof(Dependency)).Returns(new Dependency());
        var engine = new InProcessEngine<DisposableWorkload>(services, WorkloadActivation.Constructed);
        DisposableWorkload? built = null;
        DisposableWorkload.Built = w =>
        {
            built = w;
            w.ReadServices = true;
            w.Failure = new IOException("disk");
        };
        using var attempt = NewAttempt(services);

        var error = await Assert.ThrowsAsync<IOException>(async () => await engine.ExecuteAsync(attempt, CancellationToken.None));

        Assert.Equal("disk", error.Message);
        Assert.True(built!.Disposed);
        scope.Received(1).Dispose();
    }

    [Fact]
    public async Task Constructed_SyncDisposableImplementationType_BuiltAsRegistered_AndDisposed()
    {
        IServiceCollection collection = new ServiceCollection();
        collection.AddTransient<IWorkload, SyncDisposable>();
        var (activation, implementation) = WorkloadActivations.Of(collection, typeof(IWorkload));
        var (services, _, _) = Substitutes(new ReadingWorkload(reads: 0));
        var engine = new InProcessEngine<IWorkload>(services, activation, implementation);
        using var attempt = NewAttempt(services);
        SyncDisposable.Instances.Value = [];

        await engine.ExecuteAsync(attempt, CancellationToken.None);

        Assert.Equal((WorkloadActivation.Constructed, typeof(SyncDisposable)), (activation, implementation));
        Assert.True(Assert.Single(SyncDisposable.Instances.Value).Disposed);
    }

    [Fact]
    public void Activation_AnotherContainer_ScopedUnlessSingleton()
    {
        // The collection need not show what another container registers: its root is not Microsoft's provider.
        IServiceCollection collection = new ServiceCollection();
        collection.AddTransient<NoDependencies>();
        collection.AddSingleton<ReadingWorkload>(_ => new ReadingWorkload(reads: 0));
        var foreign = Substitute.For<IServiceProvider>();

        Assert.Equal(WorkloadActivation.Scoped, WorkloadActivations.Of(collection, typeof(NoDependencies), foreign).Activation);
        Assert.Equal(WorkloadActivation.Singleton, WorkloadActivations.Of(collection, typeof(ReadingWorkload), foreign).Activation);
        Assert.Equal(WorkloadActivation.Constructed, WorkloadActivations.Of(collection, typeof(NoDependencies), _host).Activation);
    }

    [Theory]
    [InlineData(ServiceLifetime.Singleton, nameof(WorkloadActivation.Singleton))]
    [InlineData(ServiceLifetime.Scoped, nameof(WorkloadActivation.Scoped))]
    [InlineData(ServiceLifetime.Transient, nameof(WorkloadActivation.Scoped))]
    public void AddWorkload_TheLastRegistrationDecides_EvenWhenMadeAfterAddWorkload(ServiceLifetime lifetime, string expected)
    {
        IServiceCollection collection = new ServiceCollection();
        collection.AddJobRunner(r => r.AddWorkload<ReadingWorkload>("reader"));
        // A factory registration: the engine cannot know what the factory needs, so only a singleton skips the scope.
        collection.Add(new ServiceDescriptor(typeof(ReadingWorkload), _ => new ReadingWorkload(reads: 0), lifetime));
        using var provider = collection.BuildServiceProvider();

        var engine = provider.GetRequiredService<WorkloadRegistry>().Find("reader")!.Engine;

        Assert.Equal(Enum.Parse<WorkloadActivation>(expected), Assert.IsType<InProcessEngine<ReadingWorkload>>(engine).Activation);
    }

    public static TheoryData<Action<IServiceCollection>, Type, string> Registrations => new()
    {
        { _ => { }, typeof(NoDependencies), nameof(WorkloadActivation.Constructed) },
        { s => s.AddSingleton<Dependency>(), typeof(DisposableWorkload), nameof(WorkloadActivation.Constructed) },
        { s => s.AddScoped<Dependency>(), typeof(DisposableWorkload), nameof(WorkloadActivation.Scoped) },
        { s => s.AddTransient<Dependency>(), typeof(DisposableWorkload), nameof(WorkloadActivation.Scoped) },
        // Not registered: the container might still build it (a default value), so the engine does not guess.
        { _ => { }, typeof(DisposableWorkload), nameof(WorkloadActivation.Scoped) },
        // The last registration decides.
        { s => s.AddScoped<Dependency>().AddSingleton<Dependency>(), typeof(DisposableWorkload), nameof(WorkloadActivation.Constructed) },
        { s => s.AddSingleton<Dependency>().AddScoped<Dependency>(), typeof(DisposableWorkload), nameof(WorkloadActivation.Scoped) },
        // Open generics: loggers and options are singletons.
        { s => s.AddLogging(), typeof(LoggingWorkload), nameof(WorkloadActivation.Constructed) },
        { s => s.AddLogging().AddScoped(typeof(Microsoft.Extensions.Logging.ILogger<>), typeof(Microsoft.Extensions.Logging.Logger<>)), typeof(LoggingWorkload), nameof(WorkloadActivation.Scoped) },
        { s => s.AddSingleton<Dependency>(), typeof(EnumerableWorkload), nameof(WorkloadActivation.Scoped) },
        { s => s.AddSingleton<Dependency>(), typeof(TwoConstructors), nameof(WorkloadActivation.Scoped) },
        { s => s.AddKeyedSingleton<Dependency>("k").AddSingleton<Dependency>(), typeof(KeyedWorkload), nameof(WorkloadActivation.Scoped) },
        { _ => { }, typeof(ProviderWorkload), nameof(WorkloadActivation.Scoped) },
        // The container answers IServiceProvider with the scope's provider, whatever is registered.
        { s => s.AddSingleton<IServiceProvider>(_ => null!), typeof(ProviderWorkload), nameof(WorkloadActivation.Scoped) },
        // Only keyed-service attributes matter: a nullable or defaulted parameter is still a singleton.
        { s => s.AddSingleton<Dependency>(), typeof(OptionalDependency), nameof(WorkloadActivation.Constructed) },
    };

    [Theory]
    [MemberData(nameof(Registrations))]
    public void Activation_ConstructedOnlyWhenEveryDependencyIsASingleton(Action<IServiceCollection> register, Type workload, string expected)
    {
        IServiceCollection collection = new ServiceCollection();
        register(collection);
        collection.AddTransient(workload);

        Assert.Equal(Enum.Parse<WorkloadActivation>(expected), WorkloadActivations.Of(collection, workload).Activation);
    }

    [Fact]
    public async Task AddWorkload_TransientWithSingletonDependencies_RunsWithoutAScope_EndToEnd()
    {
        IServiceCollection collection = new ServiceCollection();
        collection.AddSingleton<Dependency>();
        collection.AddJobRunner(r => r.AddWorkload<DisposableWorkload>("constructed"));
        await using var provider = collection.BuildServiceProvider();
        var engine = Assert.IsType<InProcessEngine<DisposableWorkload>>(provider.GetRequiredService<WorkloadRegistry>().Find("constructed")!.Engine);
        DisposableWorkload? built = null;
        DisposableWorkload.Built = w => built = w;
        using var attempt = NewAttempt(provider);

        await engine.ExecuteAsync(attempt, CancellationToken.None);

        Assert.Equal(WorkloadActivation.Constructed, engine.Activation);
        Assert.Same(provider.GetRequiredService<Dependency>(), built!.Dependency);
        Assert.True(built.Disposed);
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

    public sealed class Dependency;

    public sealed class NoDependencies : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }

    public sealed class DisposableWorkload : IWorkload, IAsyncDisposable
    {
        private static readonly AsyncLocal<Action<DisposableWorkload>?> s_built = new();

        public DisposableWorkload(Dependency dependency)
        {
            Dependency = dependency;
            s_built.Value?.Invoke(this);
        }

        /// <summary>Gets or sets what the test (its async flow) does with each instance built.</summary>
        public static Action<DisposableWorkload>? Built { get => s_built.Value; set => s_built.Value = value; }

        public Dependency Dependency { get; }

        public bool ReadServices { get; set; }

        public Action? OnDispose { get; set; }

        public Exception? Failure { get; set; }

        public int Runs { get; private set; }

        public bool Disposed { get; private set; }

        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
        {
            Runs++;
            if (ReadServices)
            {
                _ = context.Services.GetService(typeof(object));
            }

            return Failure is null ? ValueTask.CompletedTask : ValueTask.FromException(Failure);
        }

        public ValueTask DisposeAsync()
        {
            Disposed = true;
            OnDispose?.Invoke();
            return ValueTask.CompletedTask;
        }
    }

    public sealed class LoggingWorkload(Microsoft.Extensions.Logging.ILogger<LoggingWorkload> logger, Microsoft.Extensions.Options.IOptions<WorkerOptions> options) : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public override string ToString() => $"{logger} {options}";
    }

    public sealed class EnumerableWorkload(IEnumerable<Dependency> dependencies) : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public override string ToString() => dependencies.ToString()!;
    }

    public sealed class TwoConstructors : IWorkload
    {
        public TwoConstructors()
        {
        }

        public TwoConstructors(Dependency dependency) => _ = dependency;

        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }

    public sealed class KeyedWorkload([FromKeyedServices("k")] Dependency dependency) : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public override string ToString() => dependency.ToString()!;
    }

    public sealed class ProviderWorkload(IServiceProvider services) : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public override string ToString() => services.ToString()!;
    }

    public sealed class SyncDisposable : IWorkload, IDisposable
    {
        public static readonly AsyncLocal<List<SyncDisposable>> Instances = new();

        public SyncDisposable() => Instances.Value?.Add(this);

        public bool Disposed { get; private set; }

        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public void Dispose() => Disposed = true;
    }

    public sealed class OptionalDependency(Dependency? dependency = null) : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public override string ToString() => dependency?.ToString() ?? "";
    }
}
