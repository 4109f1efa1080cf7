using System.Diagnostics;

namespace JobRunner.Definitions;

/// <summary>The embedded definition store: every version of every definition, in memory.</summary>
[DebuggerDisplay("Definitions = {_versions.Count}")]
internal sealed class InMemoryDefinitionStore(TimeProvider time) : IDefinitionStore
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, List<JobDefinition>> _versions = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _aliases = new(StringComparer.Ordinal);

    public ValueTask<JobDefinition> CreateAsync(JobDefinition definition, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(definition);
        lock (_lock)
        {
            if (_versions.ContainsKey(definition.Name) || _aliases.ContainsKey(definition.Name))
            {
                throw new JobValidationException([$"Definition '{definition.Name}' already exists. Update it instead, or pick another name."]);
            }

            CheckAliases(definition);
            var stored = definition with { Version = 1, UpdatedAt = time.GetUtcNow() };
            _versions.Add(definition.Name, [stored]);
            SetAliases(stored);
            return new(stored);
        }
    }

    public ValueTask<JobDefinition> UpdateAsync(JobDefinition definition, int? expectedVersion, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(definition);
        lock (_lock)
        {
            if (!_versions.TryGetValue(definition.Name, out var versions))
            {
                throw new JobValidationException([$"Definition '{definition.Name}' does not exist. Create it first."]);
            }

            var latest = versions[^1];
            if (expectedVersion is { } expected && expected != latest.Version)
            {
                throw new JobValidationException([$"Definition '{definition.Name}' is at version {latest.Version}, not {expected}: someone else updated it. Read it again and reapply the change."]);
            }

            CheckAliases(definition);
            foreach (var alias in latest.Aliases)
            {
                _aliases.Remove(alias);
            }

            var stored = definition with { Version = latest.Version + 1, UpdatedAt = time.GetUtcNow() };
            versions.Add(stored);
            SetAliases(stored);
            return new(stored);
        }
    }

    public ValueTask<JobDefinition?> GetAsync(string nameOrAlias, int? version, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(nameOrAlias);
        lock (_lock)
        {
            var name = _aliases.GetValueOrDefault(nameOrAlias, nameOrAlias);
            if (!_versions.TryGetValue(name, out var versions))
            {
                return new((JobDefinition?)null);
            }

            return new(version is { } v ? versions.Find(d => d.Version == v) : versions[^1]);
        }
    }

    public ValueTask<IReadOnlyList<JobDefinition>> ListAsync(CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            return new([.. _versions.Values.Select(static v => v[^1]).OrderBy(static d => d.Name, StringComparer.Ordinal)]);
        }
    }

    public ValueTask<bool> DeleteAsync(string name, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(name);
        lock (_lock)
        {
            if (!_versions.Remove(name, out var versions))
            {
                return new(false);
            }

            foreach (var alias in versions[^1].Aliases)
            {
                _aliases.Remove(alias);
            }

            return new(true);
        }
    }

    private void CheckAliases(JobDefinition definition)
    {
        foreach (var alias in definition.Aliases)
        {
            if ((_aliases.TryGetValue(alias, out var owner) && owner != definition.Name) || (_versions.ContainsKey(alias) && alias != definition.Name))
            {
                throw new JobValidationException([$"Alias '{alias}' already names another definition. Pick another alias."]);
            }
        }
    }

    private void SetAliases(JobDefinition definition)
    {
        foreach (var alias in definition.Aliases)
        {
            _aliases[alias] = definition.Name;
        }
    }
}
