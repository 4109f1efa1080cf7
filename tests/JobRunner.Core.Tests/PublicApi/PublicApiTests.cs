using System.Reflection;
using System.Runtime.CompilerServices;
using System.Text;

namespace JobRunner.Tests.PublicApi;

/// <summary>
/// Snapshots the exported surface of every shipped package, so that every API change shows in review. To accept a
/// change, run the tests with JOBRUNNER_UPDATE_API=1 and commit the updated PublicApi/*.txt files.
/// </summary>
public sealed class PublicApiTests
{
    public static TheoryData<string> Packages => new()
    {
        "JobRunner.Abstractions",
        "JobRunner.Core",
        "JobRunner.Testing",
        "JobRunner.Kubernetes",
        "JobRunner.Kubernetes.Testing",
        "JobRunner.Aws",
        "JobRunner.Storage.Postgres",
    };

    [Theory]
    [MemberData(nameof(Packages))]
    public void PublicApi_MatchesSnapshot(string assemblyName)
    {
        var actual = Describe(Assembly.Load(assemblyName));
        var path = Path.Combine(SourceDirectory(), $"{assemblyName}.txt");

        if (Environment.GetEnvironmentVariable("JOBRUNNER_UPDATE_API") == "1")
        {
            File.WriteAllText(path, actual);
        }

        Assert.True(File.Exists(path), $"No API snapshot at {path}. Run the tests with JOBRUNNER_UPDATE_API=1 to create it.");
        var expected = File.ReadAllText(path).ReplaceLineEndings("\n");
        Assert.True(expected == actual, $"The public API of {assemblyName} changed. If that is intended, run the tests with JOBRUNNER_UPDATE_API=1 and commit {path}.\n{Diff(expected, actual)}");
    }

    private static string SourceDirectory([CallerFilePath] string file = "") => Path.GetDirectoryName(file)!;

    private static string Diff(string expected, string actual)
    {
        var before = expected.Split('\n').ToHashSet(StringComparer.Ordinal);
        var after = actual.Split('\n').ToHashSet(StringComparer.Ordinal);
        var sb = new StringBuilder();
        foreach (var line in before.Except(after))
        {
            sb.Append("- ").AppendLine(line);
        }

        foreach (var line in after.Except(before))
        {
            sb.Append("+ ").AppendLine(line);
        }

        return sb.ToString();
    }

    internal static string Describe(Assembly assembly)
    {
        var sb = new StringBuilder();
        foreach (var type in assembly.GetExportedTypes().OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            sb.Append(TypeHeader(type)).Append('\n');
            foreach (var member in Members(type).Order(StringComparer.Ordinal))
            {
                sb.Append("  ").Append(member).Append('\n');
            }
        }

        return sb.ToString();
    }

    private static string TypeHeader(Type type)
    {
        var kind = type.IsInterface ? "interface"
            : type.IsEnum ? "enum"
            : type.IsValueType ? (type.IsDefined(typeof(IsReadOnlyAttribute)) ? "readonly struct" : "struct")
            : type.IsSubclassOf(typeof(Delegate)) ? "delegate"
            : type.IsAbstract && type.IsSealed ? "static class"
            : type.IsAbstract ? "abstract class"
            : type.IsSealed ? "sealed class"
            : "class";
        var bases = new List<string>();
        if (type.BaseType is { } b && b != typeof(object) && b != typeof(ValueType) && b != typeof(Enum))
        {
            bases.Add(Name(b));
        }

        bases.AddRange(type.GetInterfaces().Select(Name).Order(StringComparer.Ordinal));
        return $"{kind} {Name(type)}{(bases.Count > 0 ? " : " + string.Join(", ", bases) : "")}";
    }

    private static IEnumerable<string> Members(Type type)
    {
        const BindingFlags Flags = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        if (type.IsEnum)
        {
            foreach (var name in Enum.GetNames(type))
            {
                yield return $"{name} = {Convert.ToInt64(Enum.Parse(type, name), System.Globalization.CultureInfo.InvariantCulture)}";
            }

            yield break;
        }

        foreach (var member in type.GetMembers(Flags | BindingFlags.NonPublic))
        {
            var text = member switch
            {
                ConstructorInfo c when c.IsPublic || c.IsFamily => $"{Access(c)}ctor({Parameters(c)})",
                MethodInfo m when (m.IsPublic || m.IsFamily) && !m.IsSpecialName => $"{Access(m)}{Modifiers(m)}{Name(m.ReturnType)} {m.Name}{Generics(m)}({Parameters(m)})",
                PropertyInfo p when Accessors(p) is { Length: > 0 } accessors => $"{Name(p.PropertyType)} {p.Name}{Indexer(p)} {{ {accessors} }}",
                FieldInfo f when f.IsPublic || f.IsFamily => $"{Access(f)}{(f.IsLiteral ? "const " : f.IsStatic ? "static " : "")}{(f.IsInitOnly ? "readonly " : "")}{Name(f.FieldType)} {f.Name}",
                EventInfo e when e.AddMethod is { IsPublic: true } => $"event {Name(e.EventHandlerType!)} {e.Name}",
                _ => null,
            };
            if (text is not null)
            {
                yield return text;
            }
        }
    }

    private static string Access(MethodBase m) => m.IsFamily ? "protected " : "";

    private static string Access(FieldInfo f) => f.IsFamily ? "protected " : "";

    private static string Modifiers(MethodInfo m) => m.IsStatic ? "static " : m.IsAbstract ? "abstract " : m.IsVirtual && !m.IsFinal && m.GetBaseDefinition() == m ? "virtual " : m.GetBaseDefinition() != m ? "override " : "";

    private static string Accessors(PropertyInfo p)
    {
        var parts = new List<string>();
        if (p.GetMethod is { } get && (get.IsPublic || get.IsFamily))
        {
            parts.Add((get.IsFamily ? "protected " : "") + (get.IsStatic ? "static " : "") + "get;");
        }

        if (p.SetMethod is { } set && (set.IsPublic || set.IsFamily))
        {
            var init = set.ReturnParameter.GetRequiredCustomModifiers().Any(m => m.FullName == "System.Runtime.CompilerServices.IsExternalInit");
            parts.Add((set.IsFamily ? "protected " : "") + (init ? "init;" : "set;"));
        }

        return string.Join(" ", parts);
    }

    private static string Indexer(PropertyInfo p) => p.GetIndexParameters() is { Length: > 0 } ps ? $"[{string.Join(", ", ps.Select(x => Name(x.ParameterType)))}]" : "";

    private static string Generics(MethodInfo m) => m.IsGenericMethodDefinition ? $"<{string.Join(", ", m.GetGenericArguments().Select(a => a.Name))}>" : "";

    private static string Parameters(MethodBase m) => string.Join(", ", m.GetParameters().Select(p =>
        $"{(p.IsOut ? "out " : p.ParameterType.IsByRef ? "ref " : "")}{Name(p.ParameterType)} {p.Name}{(p.HasDefaultValue ? " = " + (p.DefaultValue?.ToString() ?? "null") : "")}"));

    private static string Name(Type type)
    {
        if (type.IsByRef)
        {
            return Name(type.GetElementType()!);
        }

        if (type.IsGenericParameter)
        {
            return type.Name;
        }

        if (type.IsArray)
        {
            return Name(type.GetElementType()!) + "[]";
        }

        var name = type.IsNested ? Name(type.DeclaringType!) + "." + type.Name : type.Namespace + "." + type.Name;
        if (!type.IsGenericType)
        {
            return name;
        }

        var tick = name.IndexOf('`', StringComparison.Ordinal);
        return $"{(tick < 0 ? name : name[..tick])}<{string.Join(", ", type.GetGenericArguments().Select(Name))}>";
    }
}
