using JobRunner.Configuration;
using JobRunner.Storage.Postgres;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace JobRunner;

/// <summary>Chooses PostgreSQL as JobRunner's store and queue.</summary>
public static class PostgresJobRunnerBuilderExtensions
{
    /// <summary>
    /// Keeps jobs in PostgreSQL: one durable store and queue that many worker hosts share, with the jobs' logs and the
    /// job definitions in the same database. The schema is created or migrated when the host starts. A later
    /// <see cref="JobRunnerBuilder.UseLogStore"/> or <see cref="JobRunnerBuilder.UseDefinitionStore"/> (or
    /// <c>UseFileLogs</c>, <c>UseS3Logs</c>) replaces the PostgreSQL one.
    /// </summary>
    /// <param name="builder">The JobRunner builder.</param>
    /// <param name="connectionString">The Npgsql connection string.</param>
    /// <param name="configure">Adjusts the other settings.</param>
    /// <returns>The same builder so that additional calls can be chained.</returns>
    public static JobRunnerBuilder UsePostgres(this JobRunnerBuilder builder, string connectionString, Action<PostgresOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var services = builder.Services;
        services.AddOptions<PostgresOptions>()
            .Configure(o =>
            {
                o.ConnectionString = connectionString;
                configure?.Invoke(o);
            })
            .ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<PostgresOptions>, PostgresOptionsValidator>());
        services.TryAddSingleton<PostgresDatabase>();
        services.TryAddSingleton<PostgresJobStore>();
        services.TryAddSingleton<PostgresJobQueue>();
        services.TryAddSingleton<PostgresLogStore>();
        services.TryAddSingleton<PostgresDefinitionStore>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, PostgresBackgroundService>());
        return builder
            .UseStore(static sp => sp.GetRequiredService<PostgresJobStore>())
            .UseQueue(static sp => sp.GetRequiredService<PostgresJobQueue>())
            .UseLogStore(static sp => sp.GetRequiredService<PostgresLogStore>())
            .UseDefinitionStore(static sp => sp.GetRequiredService<PostgresDefinitionStore>());
    }
}
