using System.Globalization;
using Npgsql;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// Applies the SQL scripts shipped in the package (Migrations/NNNN_*.sql, in order) in one transaction, under an
/// advisory lock so that hosts starting together migrate once. Refuses a schema migrated by a newer version.
/// </summary>
internal static class Migrator
{
    private static readonly (int Version, string Name)[] s_scripts = Discover();

    /// <summary>The oldest server the migrations and statements run on (migration 0004 needs <c>xid8</c>).</summary>
    public static readonly Version MinimumServerVersion = new(13, 0);

    /// <summary>Gets the schema version this package writes.</summary>
    public static int LatestVersion => s_scripts[^1].Version;

    public static async Task RunAsync(PostgresDatabase db, CancellationToken cancellationToken)
    {
        try
        {
            await db.Pipeline.ExecuteAsync(
                static async (d, token) => await MigrateAsync(d, token).ConfigureAwait(false),
                db,
                cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw db.Explain(e);
        }
    }

    private static async Task MigrateAsync(PostgresDatabase db, CancellationToken cancellationToken)
    {
        var schema = db.Schema;
        var connection = await db.Client.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using (connection.ConfigureAwait(false))
        {
            if (connection.PostgreSqlVersion < MinimumServerVersion)
            {
                throw new PostgresStorageException(
                    $"The PostgreSQL server is version {connection.PostgreSqlVersion}; JobRunner.Storage.Postgres needs {MinimumServerVersion.Major} or later " +
                    "(the event relay reads 64-bit transaction ids: xid8, pg_current_xact_id). Upgrade the server, or point PostgresOptions.ConnectionString at a newer one.");
            }

            var transaction = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
            await using (transaction.ConfigureAwait(false))
            {
                // Hosts that start at once wait here for the first one; then they find the schema current. Neither that
                // wait nor a migration (an index built over a large table) is cut short by the connection's statement
                // timeout: a host starting during another's long migration would fail its start.
                await ExecuteAsync(connection, "SELECT set_config('statement_timeout', '0', true), set_config('idle_in_transaction_session_timeout', '0', true)", cancellationToken).ConfigureAwait(false);
                await ExecuteAsync(connection, "SELECT pg_advisory_xact_lock(hashtext($1))", cancellationToken, "jobrunner.migrate." + db.Options.Schema).ConfigureAwait(false);
                var exists = await ScalarAsync<bool>(connection, "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'schema_migrations')", cancellationToken, db.Options.Schema).ConfigureAwait(false);
                var current = 0;
                if (exists)
                {
                    current = await ScalarAsync<int>(connection, $"SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations", cancellationToken).ConfigureAwait(false);
                }

                if (current > LatestVersion)
                {
                    throw new PostgresStorageException(
                        $"The schema '{db.Options.Schema}' was migrated to version {current} by a newer JobRunner; this JobRunner.Storage.Postgres knows versions up to {LatestVersion}. " +
                        "Upgrade the package on this host (hosts sharing a database must run versions that know its schema), or point it at another schema with PostgresOptions.Schema.");
                }

                if (current == LatestVersion)
                {
                    await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
                    return;
                }

                if (!db.Options.ApplyMigrations)
                {
                    throw new PostgresStorageException(
                        $"The schema '{db.Options.Schema}' is at version {current}, and this JobRunner needs version {LatestVersion}. " +
                        "Set PostgresOptions.ApplyMigrations = true on one host (with a user that may create the schema and its tables), or apply the scripts from the package's Migrations folder.");
                }

                // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists (a DBA may have
                // created it and handed it to this user): create it only when it is missing.
                if (!await ScalarAsync<bool>(connection, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", cancellationToken, db.Options.Schema).ConfigureAwait(false))
                {
                    await ExecuteAsync(connection, $"CREATE SCHEMA {schema}", cancellationToken).ConfigureAwait(false);
                }

                await ExecuteAsync(connection, $"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())", cancellationToken).ConfigureAwait(false);
                foreach (var (version, name) in s_scripts)
                {
                    if (version <= current)
                    {
                        continue;
                    }

                    await ExecuteAsync(connection, Read(name).Replace("{schema}", schema, StringComparison.Ordinal), cancellationToken).ConfigureAwait(false);
                    await ExecuteAsync(connection, $"INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)", cancellationToken, version, name).ConfigureAwait(false);
                }

                await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
            }
        }
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, string sql, CancellationToken cancellationToken, params object[] parameters)
    {
        using var command = Command(connection, sql, parameters);
        await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
    }

    private static async Task<T> ScalarAsync<T>(NpgsqlConnection connection, string sql, CancellationToken cancellationToken, params object[] parameters)
    {
        using var command = Command(connection, sql, parameters);
        return (T)(await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
    }

    private static NpgsqlCommand Command(NpgsqlConnection connection, string sql, object[] parameters)
    {
        // No client-side limit either: the migration turned the server's statement timeout off (see above).
        var command = new NpgsqlCommand(sql, connection) { CommandTimeout = 0 };
        foreach (var value in parameters)
        {
            command.Parameters.Add(new NpgsqlParameter { Value = value });
        }

        return command;
    }

    private static (int Version, string Name)[] Discover()
    {
        const string Prefix = "JobRunner.Storage.Postgres.Migrations.";
        var scripts = new List<(int, string)>();
        foreach (var resource in typeof(Migrator).Assembly.GetManifestResourceNames())
        {
            if (resource.StartsWith(Prefix, StringComparison.Ordinal) && resource.EndsWith(".sql", StringComparison.Ordinal))
            {
                var name = resource[Prefix.Length..];
                scripts.Add((int.Parse(name.AsSpan(0, name.IndexOf('_', StringComparison.Ordinal)), NumberStyles.None, CultureInfo.InvariantCulture), name));
            }
        }

        scripts.Sort();
        return scripts.Count > 0 ? [.. scripts] : throw new InvalidOperationException("No migrations are embedded in JobRunner.Storage.Postgres.");
    }

    private static string Read(string name)
    {
        using var stream = typeof(Migrator).Assembly.GetManifestResourceStream("JobRunner.Storage.Postgres.Migrations." + name)!;
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}
