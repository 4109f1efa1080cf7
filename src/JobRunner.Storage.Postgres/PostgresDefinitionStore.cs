using System.Text.Json;
using Npgsql;
using NpgsqlTypes;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// Definitions in PostgreSQL, shared by every host: every version in <c>definitions</c>, the latest version per name in
/// <c>definition_heads</c>, and the aliases of the latest version in <c>definition_aliases</c>. Writes take one advisory
/// lock per schema, so that names and aliases stay unique across hosts; reads take none. Secret values are stored as
/// given (engines need them): restrict who can read the schema.
/// </summary>
internal sealed class PostgresDefinitionStore : IDefinitionStore
{
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web);
    private readonly PostgresDatabase _db;
    private readonly string _lockSql;
    private readonly string _getSql;
    private readonly string _listSql;
    private readonly string _deleteSql;

    public PostgresDefinitionStore(PostgresDatabase db)
    {
        _db = db;
        var s = db.Schema;
        _lockSql = $"SELECT pg_advisory_xact_lock(hashtext('{s.Replace("'", "''", StringComparison.Ordinal)}.definitions'))";
        const string Columns = "d.name, d.version, d.body, d.retry, d.updated_at";
        _getSql = $"""
            SELECT {Columns} FROM {s}.definition_heads h JOIN {s}.definitions d ON d.name = h.name
            WHERE h.name = coalesce((SELECT name FROM {s}.definition_aliases WHERE alias = @name), @name)
              AND d.version = coalesce(@version, h.latest)
            """;
        _listSql = $"SELECT {Columns} FROM {s}.definition_heads h JOIN {s}.definitions d ON d.name = h.name AND d.version = h.latest ORDER BY h.name COLLATE \"C\"";
        _deleteSql = $"""
            WITH h AS (DELETE FROM {s}.definition_heads WHERE name = @name RETURNING name),
            d AS (DELETE FROM {s}.definitions WHERE name IN (SELECT name FROM h))
            SELECT count(*) FROM h
            """;
    }

    public async ValueTask<JobDefinition> CreateAsync(JobDefinition definition, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(definition);
        return await WriteAsync(definition, expectedVersion: null, create: true, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask<JobDefinition> UpdateAsync(JobDefinition definition, int? expectedVersion, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(definition);
        return await WriteAsync(definition, expectedVersion, create: false, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask<JobDefinition?> GetAsync(string nameOrAlias, int? version, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(nameOrAlias);
        var found = await _db.RunAsync(_db.Client, (Sql: _getSql, Name: nameOrAlias, Version: version), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Sql, c);
            command.Parameters.Add(new("name", NpgsqlDbType.Text) { Value = s.Name });
            command.Parameters.Add(new("version", NpgsqlDbType.Integer) { Value = (object?)s.Version ?? DBNull.Value });
            return await ReadAllAsync(command, token).ConfigureAwait(false);
        }, cancellationToken).ConfigureAwait(false);
        return found.Count == 0 ? null : found[0];
    }

    public async ValueTask<IReadOnlyList<JobDefinition>> ListAsync(CancellationToken cancellationToken)
    {
        return await _db.RunAsync(_db.Client, _listSql, static async (c, sql, token) =>
        {
            using var command = new NpgsqlCommand(sql, c);
            return await ReadAllAsync(command, token).ConfigureAwait(false);
        }, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask<bool> DeleteAsync(string name, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(name);
        return await _db.RunAsync(_db.Client, (Sql: _deleteSql, Name: name, Lock: _lockSql), static async (c, s, token) =>
        {
            // Under the writers' lock: a delete that ran beside an update saw the update's head (it waited for its row
            // lock) but not its new version (its snapshot was older), and left that version behind, which then failed
            // every later update of a definition created again under that name.
            var transaction = await c.BeginTransactionAsync(token).ConfigureAwait(false);
            await using var transactionScope = transaction.ConfigureAwait(false);
            using (var locking = new NpgsqlCommand(s.Lock, c, transaction))
            {
                await locking.ExecuteNonQueryAsync(token).ConfigureAwait(false);
            }

            using var command = new NpgsqlCommand(s.Sql, c, transaction);
            command.Parameters.Add(new("name", NpgsqlDbType.Text) { Value = s.Name });
            var deleted = (long)(await command.ExecuteScalarAsync(token).ConfigureAwait(false))! > 0;
            await transaction.CommitAsync(token).ConfigureAwait(false);
            return deleted;
        }, cancellationToken).ConfigureAwait(false);
    }

    private async Task<JobDefinition> WriteAsync(JobDefinition definition, int? expectedVersion, bool create, CancellationToken cancellationToken)
    {
        var state = (Store: this, Definition: definition, Expected: expectedVersion, Create: create, Now: _db.Time.GetUtcNow());
        return await _db.RunAsync(_db.Client, state, static async (c, s, tries, token) =>
        {
            var schema = s.Store._db.Schema;
            var name = s.Definition.Name;
            var body = JsonSerializer.Serialize(s.Definition with { Retry = null, Version = 0, UpdatedAt = default }, s_json);
            var transaction = await c.BeginTransactionAsync(token).ConfigureAwait(false);
            await using var transactionScope = transaction.ConfigureAwait(false);
            using (var command = new NpgsqlCommand(s.Store._lockSql, c, transaction))
            {
                await command.ExecuteNonQueryAsync(token).ConfigureAwait(false);
            }

            int? latest;
            using (var command = new NpgsqlCommand($"SELECT latest FROM {schema}.definition_heads WHERE name = @name", c, transaction))
            {
                command.Parameters.Add(new("name", NpgsqlDbType.Text) { Value = name });
                latest = await command.ExecuteScalarAsync(token).ConfigureAwait(false) as int?;
            }

            if (tries > 1 && latest is { } head)
            {
                // A retry: the first try may have committed before its reply was lost. Its version is the latest one,
                // written at this call's time with this body.
                using var written = new NpgsqlCommand($"SELECT EXISTS (SELECT 1 FROM {schema}.definitions WHERE name = @name AND version = @version AND updated_at = @now AND body = @body::jsonb)", c, transaction);
                written.Parameters.Add(new("name", NpgsqlDbType.Text) { Value = name });
                written.Parameters.Add(new("version", NpgsqlDbType.Integer) { Value = head });
                written.Parameters.Add(new("now", NpgsqlDbType.TimestampTz) { Value = s.Now });
                written.Parameters.Add(new("body", NpgsqlDbType.Text) { Value = body });
                if ((bool)(await written.ExecuteScalarAsync(token).ConfigureAwait(false))!)
                {
                    await transaction.CommitAsync(token).ConfigureAwait(false);
                    return s.Definition with { Version = head, UpdatedAt = s.Now };
                }
            }

            if (s.Create && (latest is not null || await OwnerOfAliasAsync(c, transaction, schema, name, token).ConfigureAwait(false) is not null))
            {
                throw new JobValidationException([$"Definition '{name}' already exists. Update it instead, or pick another name."]);
            }

            if (!s.Create && latest is null)
            {
                throw new JobValidationException([$"Definition '{name}' does not exist. Create it first."]);
            }

            if (!s.Create && s.Expected is { } expected && expected != latest)
            {
                throw new JobValidationException([$"Definition '{name}' is at version {latest}, not {expected}: someone else updated it. Read it again and reapply the change."]);
            }

            foreach (var alias in s.Definition.Aliases)
            {
                var owner = await OwnerOfAliasAsync(c, transaction, schema, alias, token).ConfigureAwait(false);
                if ((owner is not null && owner != name) || (alias != name && await IsNameAsync(c, transaction, schema, alias, token).ConfigureAwait(false)))
                {
                    throw new JobValidationException([$"Alias '{alias}' already names another definition. Pick another alias."]);
                }
            }

            var stored = s.Definition with { Version = (latest ?? 0) + 1, UpdatedAt = s.Now };
            using (var command = new NpgsqlCommand(
                $"""
                INSERT INTO {schema}.definitions (name, version, body, retry, updated_at) VALUES (@name, @version, @body::jsonb, @retry::jsonb, @now);
                INSERT INTO {schema}.definition_heads (name, latest) VALUES (@name, @version) ON CONFLICT (name) DO UPDATE SET latest = excluded.latest;
                DELETE FROM {schema}.definition_aliases WHERE name = @name;
                INSERT INTO {schema}.definition_aliases (alias, name) SELECT a, @name FROM unnest(@aliases) AS a;
                """,
                c,
                transaction))
            {
                command.Parameters.Add(new("name", NpgsqlDbType.Text) { Value = name });
                command.Parameters.Add(new("version", NpgsqlDbType.Integer) { Value = stored.Version });
                command.Parameters.Add(new("body", NpgsqlDbType.Text) { Value = body });
                command.Parameters.Add(new("retry", NpgsqlDbType.Text) { Value = (object?)JobRows.WriteRetry(stored.Retry) ?? DBNull.Value });
                command.Parameters.Add(new("now", NpgsqlDbType.TimestampTz) { Value = s.Now });
                command.Parameters.Add(new("aliases", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = s.Definition.Aliases.Distinct(StringComparer.Ordinal).ToArray() });
                await command.ExecuteNonQueryAsync(token).ConfigureAwait(false);
            }

            await transaction.CommitAsync(token).ConfigureAwait(false);
            s.Store.AfterWrite?.Invoke(tries);
            return stored;
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Called after each try of a definition write committed, with the try's number (1 for the first); for tests.</summary>
    internal Action<int>? AfterWrite { get; set; }

    private static async Task<string?> OwnerOfAliasAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string schema, string alias, CancellationToken cancellationToken)
    {
        using var command = new NpgsqlCommand($"SELECT name FROM {schema}.definition_aliases WHERE alias = @alias", connection, transaction);
        command.Parameters.Add(new("alias", NpgsqlDbType.Text) { Value = alias });
        return await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) as string;
    }

    private static async Task<bool> IsNameAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string schema, string name, CancellationToken cancellationToken)
    {
        using var command = new NpgsqlCommand($"SELECT EXISTS (SELECT 1 FROM {schema}.definition_heads WHERE name = @name)", connection, transaction);
        command.Parameters.Add(new("name", NpgsqlDbType.Text) { Value = name });
        return (bool)(await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
    }

    private static async Task<List<JobDefinition>> ReadAllAsync(NpgsqlCommand command, CancellationToken cancellationToken)
    {
        var result = new List<JobDefinition>();
        var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        await using var readerScope = reader.ConfigureAwait(false);
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            var name = reader.GetString(0);
            var body = JsonSerializer.Deserialize<JobDefinition>(reader.GetString(2), s_json)
                ?? throw new PostgresStorageException($"The stored definition '{name}' is empty. Delete it and create it again.");
            result.Add(body with
            {
                Version = reader.GetInt32(1),
                Retry = reader.IsDBNull(3) ? null : JobRows.ReadRetry(reader.GetString(3)),
                UpdatedAt = reader.GetFieldValue<DateTimeOffset>(4),
            });
        }

        return result;
    }
}
