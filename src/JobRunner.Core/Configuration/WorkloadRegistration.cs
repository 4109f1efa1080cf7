namespace JobRunner.Configuration;

/// <summary>One workload as registered: its name, options and how to build its engine.</summary>
internal sealed class WorkloadRegistration(string name, Type? workloadType, WorkloadOptions options, Func<IServiceProvider, IExecutionEngine> engineFactory)
{
    public string Name { get; } = name;

    public Type? WorkloadType { get; } = workloadType;

    public WorkloadOptions Options { get; } = options;

    public Func<IServiceProvider, IExecutionEngine> EngineFactory { get; } = engineFactory;

    /// <summary>Gets the container spec of a container workload, validated at start.</summary>
    public ContainerSpec? Spec { get; init; }

    /// <summary>Gets the input type of a typed workload, or <see langword="null"/>.</summary>
    public Type? InputType { get; } = FindInputType(workloadType);

    public bool RequiresInput => Options.RequiresInput ?? InputType is not null;

    private static Type? FindInputType(Type? type)
    {
        for (var t = type; t is not null; t = t.BaseType)
        {
            if (t.IsGenericType)
            {
                var definition = t.GetGenericTypeDefinition();
                if (definition == typeof(Workload<>) || definition == typeof(Workload<,>))
                {
                    return t.GetGenericArguments()[0];
                }
            }
        }

        return null;
    }
}
