using NSubstitute;
using JobRunner.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace JobRunner.Storage.Postgres.Tests;

public sealed class MigrationTests : IAsyncLifetime
{
    private readonly PostgresTestDatabase _database = new();
    private readonly FakeTimeProvider _time = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _database.DisposeAsync();

    [Fact]
    public async Task Hosts_starting_together_migrate_once_and_a_second_run_changes_nothing()
    {
        var hosts = Enumerable.Range(0, 4).Select(_ => _database.Open(_time)).ToArray();

        await Task.WhenAll(hosts.Select(h => h.EnsureMigratedAsync(default)));
        await _database.Open(_time).EnsureMigratedAsync(default);

        Assert.Equal((long)Migrator.LatestVersion, await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.schema_migrations"));
        Assert.Equal(Migrator.LatestVersion, await _database.ScalarAsync<int>("SELECT max(version) FROM {s}.schema_migrations"));
    }

    [Fact]
    public async Task A_host_starting_while_another_migrates_for_longer_than_the_statement_timeout_waits_and_starts()
    {
        // Another host holds the migration lock for 2 s (as a long index build would); this one's statements time out
        // after 1 s.
        await using var other = new Npgsql.NpgsqlConnection(_database.ConnectionString);
        await other.OpenAsync();
        await using var holding = await other.BeginTransactionAsync();
        await using (var take = new Npgsql.NpgsqlCommand($"SELECT pg_advisory_xact_lock(hashtext('jobrunner.migrate.{_database.Schema}'))", other, holding))
        {
            await take.ExecuteNonQueryAsync();
        }

        var starting = _database.Open(_time, o => o.StatementTimeout = TimeSpan.FromSeconds(1)).EnsureMigratedAsync(default);
        await using (var work = new Npgsql.NpgsqlCommand("SELECT pg_sleep(2)", other, holding))
        {
            await work.ExecuteNonQueryAsync();
        }

        await holding.CommitAsync();
        await starting.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(Migrator.LatestVersion, await _database.ScalarAsync<int>("SELECT max(version) FROM {s}.schema_migrations"));
    }

    [Fact]
    public async Task A_schema_at_version_1_is_upgraded_in_place_and_keeps_its_jobs()
    {
        // A schema as version 1 left it: the tables of 0002 do not exist yet.
        var (_, store, _, _) = _database.OpenStore(_time);
        var job = Jobs.New(_time);
        await store.InsertAsync(job, default);
        await _database.ExecuteAsync("DROP TABLE {s}.job_logs, {s}.job_log_heads, {s}.definition_aliases, {s}.definition_heads, {s}.definitions; ALTER TABLE {s}.jobs DROP COLUMN affinity; ALTER TABLE {s}.job_history DROP COLUMN instance, DROP COLUMN xact_id; ALTER TABLE {s}.jobs RESET (fillfactor); DELETE FROM {s}.schema_migrations WHERE version > 1");

        var upgraded = _database.Open(_time);
        await upgraded.EnsureMigratedAsync(default);

        Assert.Equal(Migrator.LatestVersion, await _database.ScalarAsync<int>("SELECT max(version) FROM {s}.schema_migrations"));
        Assert.Equal(0L, await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.job_logs"));
        Assert.NotNull(await new PostgresJobStore(upgraded, Substitute.For<IJobEventBus>()).GetAsync(job.Id, default));
    }

    [Fact]
    public async Task A_schema_at_version_2_gets_free_space_in_the_jobs_pages_and_keeps_its_jobs()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var job = Jobs.New(_time);
        await store.InsertAsync(job, default);
        await _database.ExecuteAsync("ALTER TABLE {s}.jobs RESET (fillfactor); ALTER TABLE {s}.job_history DROP COLUMN xact_id; DELETE FROM {s}.schema_migrations WHERE version > 2");
        Assert.Empty(await _database.ScalarAsync<string[]>("SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = '{s}.jobs'::regclass"));

        var upgraded = _database.Open(_time);
        await upgraded.EnsureMigratedAsync(default);

        Assert.Equal(Migrator.LatestVersion, await _database.ScalarAsync<int>("SELECT max(version) FROM {s}.schema_migrations"));
        Assert.Equal(["fillfactor=70"], await _database.ScalarAsync<string[]>("SELECT reloptions FROM pg_class WHERE oid = '{s}.jobs'::regclass"));
        Assert.NotNull(await new PostgresJobStore(upgraded, Substitute.For<IJobEventBus>()).GetAsync(job.Id, default));
    }

    [Fact]
    public async Task A_schema_at_version_3_gets_history_transaction_ids_for_new_rows_only_without_rewriting_the_table()
    {
        // A schema as version 3 left it, with history: job_history has no xact_id.
        var (_, store, _, _) = _database.OpenStore(_time);
        var job = Jobs.New(_time);
        await store.InsertAsync(job, default);
        await _database.ExecuteAsync("ALTER TABLE {s}.job_history DROP COLUMN xact_id; DELETE FROM {s}.schema_migrations WHERE version > 3");
        var file = await _database.ScalarAsync<long>("SELECT pg_relation_filenode('{s}.job_history')::bigint");

        var upgraded = _database.Open(_time);
        await upgraded.EnsureMigratedAsync(default);
        var upgradedStore = new PostgresJobStore(upgraded, Substitute.For<IJobEventBus>());
        await upgradedStore.InsertAsync(Jobs.New(_time), default);

        Assert.Equal(Migrator.LatestVersion, await _database.ScalarAsync<int>("SELECT max(version) FROM {s}.schema_migrations"));
        // The old row keeps NULL (not the migration's transaction id), the new one has its writer's; the table was not rewritten.
        Assert.Equal(1L, await _database.ScalarAsync<long>($"SELECT count(*) FROM {{s}}.job_history WHERE xact_id IS NULL AND job_id = '{job.Id}'"));
        Assert.Equal(1L, await _database.ScalarAsync<long>($"SELECT count(*) FROM {{s}}.job_history WHERE xact_id IS NOT NULL AND job_id <> '{job.Id}'"));
        Assert.Equal(file, await _database.ScalarAsync<long>("SELECT pg_relation_filenode('{s}.job_history')::bigint"));
        Assert.Equal(
            "CREATE INDEX job_history_xact ON {s}.job_history USING btree (xact_id, id) WHERE (xact_id IS NOT NULL)",
            (await _database.ScalarAsync<string>("SELECT pg_get_indexdef('{s}.job_history_xact'::regclass)")).Replace($"\"{_database.Schema}\"", "{s}", StringComparison.Ordinal).Replace(_database.Schema, "{s}", StringComparison.Ordinal));
        Assert.NotNull(await upgradedStore.GetAsync(job.Id, default));
    }

    [Fact]
    public async Task A_schema_at_version_3_with_the_column_and_index_built_beforehand_as_the_script_says_is_upgraded()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        await store.InsertAsync(Jobs.New(_time), default);
        await _database.ExecuteAsync("ALTER TABLE {s}.job_history DROP COLUMN xact_id; DELETE FROM {s}.schema_migrations WHERE version > 3");
        await _database.ExecuteAsync("ALTER TABLE {s}.job_history ADD COLUMN IF NOT EXISTS xact_id xid8");
        await _database.ExecuteAsync("CREATE INDEX CONCURRENTLY IF NOT EXISTS job_history_xact ON {s}.job_history (xact_id, id) WHERE xact_id IS NOT NULL");

        var upgraded = _database.Open(_time);
        await upgraded.EnsureMigratedAsync(default);
        await new PostgresJobStore(upgraded, Substitute.For<IJobEventBus>()).InsertAsync(Jobs.New(_time), default);

        Assert.Equal(Migrator.LatestVersion, await _database.ScalarAsync<int>("SELECT max(version) FROM {s}.schema_migrations"));
        Assert.Equal(1L, await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.job_history WHERE xact_id IS NOT NULL"));
        // The table's own indexes first (OFFSET 0 keeps the planner from reordering): pg_indexes may call pg_get_indexdef on
        // any schema's index, and another test class dropping its schema at that moment fails it ("could not open relation").
        Assert.Equal(1L, await _database.ScalarAsync<long>("SELECT count(*) FROM (SELECT indexrelid FROM pg_index WHERE indrelid = '{s}.job_history'::regclass OFFSET 0) i WHERE pg_get_indexdef(i.indexrelid) LIKE '%(xact_id, id)%'"));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_schema_at_version_4_gets_the_tenant_ready_index_instead_of_the_old_one_and_the_dequeue_function(bool indexBuiltBeforehand)
    {
        // A schema as version 4 left it, with a ready job.
        var (_, store, _, _) = _database.OpenStore(_time);
        var job = Jobs.New(_time);
        await store.InsertAsync(job, default);
        await _database.ExecuteAsync(
            "DROP INDEX {s}.jobs_ready_tenant; DROP INDEX {s}.jobs_scheduled; ALTER TABLE {s}.jobs DROP COLUMN due; DROP FUNCTION {s}.dequeue; " +
            "DELETE FROM {s}.schema_migrations WHERE version > 4; CREATE INDEX jobs_ready ON {s}.jobs (priority DESC, ready_at, id) WHERE state IN (0, 1)");
        if (indexBuiltBeforehand)
        {
            // The statements of the script's header.
            await _database.ExecuteAsync("ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS due boolean NOT NULL DEFAULT false");
            await _database.ExecuteAsync("CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_ready_tenant ON {s}.jobs (priority DESC, tenant, ready_at, id) WHERE state = 0 OR (state = 1 AND due)");
            await _database.ExecuteAsync("CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_scheduled ON {s}.jobs (priority, ready_at) WHERE state = 1 AND NOT due");
        }

        var upgraded = _database.Open(_time);
        await upgraded.EnsureMigratedAsync(default);

        Assert.Equal(Migrator.LatestVersion, await _database.ScalarAsync<int>("SELECT max(version) FROM {s}.schema_migrations"));
        Assert.Equal(
            ["jobs_dedupe", "jobs_finished", "jobs_leases", "jobs_pkey", "jobs_ready_tenant", "jobs_scheduled", "jobs_seq"],
            await _database.ScalarAsync<string[]>("SELECT array_agg(indexname::text ORDER BY indexname) FROM pg_indexes WHERE schemaname = '" + _database.Schema + "' AND tablename = 'jobs'"));
        var buffer = new QueuedJob[4];
        Assert.Equal(1, await new PostgresJobQueue(upgraded).DequeueAsync(buffer, TimeSpan.FromSeconds(30), default));
        Assert.Equal(job.Id, buffer[0].Id);
    }

    [Fact]
    public async Task A_schema_at_version_4_whose_index_build_beforehand_failed_gets_the_index_built_again()
    {
        // A schema as version 4 left it, with two ready jobs of one priority, and a concurrent build of the new index
        // that failed (here: as a unique index, on duplicate values), leaving an INVALID index of that name behind.
        var (_, store, _, _) = _database.OpenStore(_time);
        await store.InsertAsync(Jobs.New(_time), default);
        await store.InsertAsync(Jobs.New(_time), default);
        await _database.ExecuteAsync(
            "DROP INDEX {s}.jobs_ready_tenant; DROP INDEX {s}.jobs_scheduled; ALTER TABLE {s}.jobs DROP COLUMN due; DROP FUNCTION {s}.dequeue; " +
            "DELETE FROM {s}.schema_migrations WHERE version > 4; CREATE INDEX jobs_ready ON {s}.jobs (priority DESC, ready_at, id) WHERE state IN (0, 1)");
        await _database.ExecuteAsync("ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS due boolean NOT NULL DEFAULT false");
        await Assert.ThrowsAsync<Npgsql.PostgresException>(() => _database.ExecuteAsync("CREATE UNIQUE INDEX CONCURRENTLY jobs_ready_tenant ON {s}.jobs (priority)"));
        Assert.False(await _database.ScalarAsync<bool>($"SELECT indisvalid FROM pg_index WHERE indexrelid = '\"{_database.Schema}\".jobs_ready_tenant'::regclass"));

        await _database.Open(_time).EnsureMigratedAsync(default);

        Assert.True(await _database.ScalarAsync<bool>($"SELECT indisvalid AND NOT indisunique FROM pg_index WHERE indexrelid = '\"{_database.Schema}\".jobs_ready_tenant'::regclass"));
        Assert.Contains("(priority DESC, tenant, ready_at, id)", await _database.ScalarAsync<string>($"SELECT pg_get_indexdef('\"{_database.Schema}\".jobs_ready_tenant'::regclass)"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_schema_one_version_newer_than_this_package_is_refused()
    {
        await _database.Open(_time).EnsureMigratedAsync(default);
        await _database.ExecuteAsync($"INSERT INTO {{s}}.schema_migrations (version, name) VALUES ({Migrator.LatestVersion + 1}, 'next.sql')");

        var error = await Assert.ThrowsAsync<PostgresStorageException>(() => _database.Open(_time).EnsureMigratedAsync(default));

        Assert.Contains($"version {Migrator.LatestVersion + 1} by a newer JobRunner", error.Message, StringComparison.Ordinal);
        Assert.Contains($"knows versions up to {Migrator.LatestVersion}", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_schema_migrated_by_a_newer_version_is_refused_with_the_fix()
    {
        await _database.Open(_time).EnsureMigratedAsync(default);
        await _database.ExecuteAsync("INSERT INTO {s}.schema_migrations (version, name) VALUES (999, '0999_future.sql')");

        var error = await Assert.ThrowsAsync<PostgresStorageException>(() => _database.Open(_time).EnsureMigratedAsync(default));

        Assert.Contains("version 999", error.Message, StringComparison.Ordinal);
        Assert.Contains("Upgrade the package", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Without_ApplyMigrations_an_old_schema_is_an_error_that_names_the_option()
    {
        var error = await Assert.ThrowsAsync<PostgresStorageException>(() => _database.Open(_time, o => o.ApplyMigrations = false).EnsureMigratedAsync(default));
        Assert.Contains("ApplyMigrations", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_server_that_is_not_there_fails_the_start_with_host_and_port()
    {
        var port = FreePort();
        var options = _database.Options(o =>
        {
            o.ConnectionString = $"Host=127.0.0.1;Port={port};Username=postgres;Timeout=2";
            o.MaxRetries = 0;
        });
        using var host = BuildHost(options);

        var error = await Assert.ThrowsAsync<PostgresStorageException>(() => host.StartAsync());

        Assert.Contains($"127.0.0.1:{port}", error.Message, StringComparison.Ordinal);
        Assert.Contains("Check Host and Port", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_user_without_permission_gets_an_error_that_names_the_grant()
    {
        var role = "jr_limited_" + Guid.NewGuid().ToString("N")[..8];
        await _database.ExecuteAsync($"CREATE ROLE {role} LOGIN; REVOKE CREATE ON DATABASE postgres FROM PUBLIC");
        try
        {
            var builder = new Npgsql.NpgsqlConnectionStringBuilder(_database.ConnectionString) { Username = role };
            var db = _database.Open(_time, o => o.ConnectionString = builder.ConnectionString);

            var error = await Assert.ThrowsAsync<PostgresStorageException>(() => db.EnsureMigratedAsync(default));

            Assert.Contains("permission denied", error.Message, StringComparison.Ordinal);
            Assert.Contains("Grant the user CREATE", error.Message, StringComparison.Ordinal);
        }
        finally
        {
            await _database.ExecuteAsync($"DROP ROLE {role}");
        }
    }

    [Fact]
    public async Task A_schema_created_by_an_administrator_migrates_without_CREATE_on_the_database()
    {
        var role = "jr_owner_" + Guid.NewGuid().ToString("N")[..8];
        await _database.ExecuteAsync($"CREATE ROLE {role} LOGIN; REVOKE CREATE ON DATABASE postgres FROM PUBLIC; CREATE SCHEMA {{s}} AUTHORIZATION {role}");
        try
        {
            var builder = new Npgsql.NpgsqlConnectionStringBuilder(_database.ConnectionString) { Username = role };
            var db = _database.Open(_time, o => o.ConnectionString = builder.ConnectionString);

            await db.EnsureMigratedAsync(default);

            Assert.Equal(Migrator.LatestVersion, await _database.ScalarAsync<int>("SELECT max(version) FROM {s}.schema_migrations"));
        }
        finally
        {
            await _database.ExecuteAsync($"DROP SCHEMA {{s}} CASCADE; DROP ROLE {role}");
        }
    }

    [Theory]
    [InlineData(nameof(PostgresOptions.StatementTimeout), 25.0 * 24 * 60 * 60 * 1000)] // above int.MaxValue ms
    [InlineData(nameof(PostgresOptions.IdleInTransactionTimeout), 0.5)] // would round to 0, which turns it off
    [InlineData(nameof(PostgresOptions.PollInterval), 50.0 * 24 * 60 * 60 * 1000)] // above a timer's limit
    [InlineData(nameof(PostgresOptions.HousekeepingInterval), 50.0 * 24 * 60 * 60 * 1000)]
    [InlineData(nameof(PostgresOptions.EventRelayInterval), 0.5)]
    [InlineData(nameof(PostgresOptions.HistoryRetention), 40_000.0 * 24 * 60 * 60 * 1000)]
    public void Times_out_of_range_are_rejected_at_start(string option, double milliseconds)
    {
        var options = _database.Options();
        typeof(PostgresOptions).GetProperty(option)!.SetValue(options, TimeSpan.FromMilliseconds(milliseconds));

        var result = new PostgresOptionsValidator().Validate(null, options);

        Assert.Contains(result.Failures ?? [], f => f.StartsWith($"PostgresOptions.{option} is ", StringComparison.Ordinal) && f.Contains("Use 1 ms to", StringComparison.Ordinal));
    }

    [Fact]
    public void Bad_options_are_rejected_at_start_naming_each_fix()
    {
        var result = new PostgresOptionsValidator().Validate(null, new PostgresOptions { ConnectionString = "", Schema = "Bad-Name", MaxBatchSize = 0, MaxLeaseExpirations = 0, InsertBatchesInFlight = 0 });

        Assert.True(result.Failed);
        Assert.Contains(result.Failures!, f => f.Contains("ConnectionString is empty", StringComparison.Ordinal));
        Assert.Contains(result.Failures!, f => f.Contains("Schema 'Bad-Name'", StringComparison.Ordinal));
        Assert.Contains(result.Failures!, f => f.Contains("MaxBatchSize", StringComparison.Ordinal));
        Assert.Contains(result.Failures!, f => f.Contains("MaxLeaseExpirations", StringComparison.Ordinal));
        Assert.Contains(result.Failures!, f => f.Contains("InsertBatchesInFlight is 0. Use 1 to 64.", StringComparison.Ordinal));
        Assert.True(new PostgresOptionsValidator().Validate(null, _database.Options()).Succeeded);
    }

    private static IHost BuildHost(PostgresOptions options)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddJobRunner(r => r.UsePostgres(options.ConnectionString, o =>
        {
            o.Schema = options.Schema;
            o.MaxRetries = options.MaxRetries;
        }).ConfigureWorker(w => w.Enabled = false));
        return builder.Build();
    }

    private static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }
}
