namespace Ecmt.Engine.Conversion;

/// <summary>Where MT neurons sit in every block (ECMT.md section 3).</summary>
public enum Place
{
    /// <summary>Input of the qkv linear (output of EC-LN1).</summary>
    FcQkv,
    /// <summary>The q third of the qkv linear's output.</summary>
    Q,
    /// <summary>The k third of the qkv linear's output.</summary>
    K,
    /// <summary>The v third of the qkv linear's output.</summary>
    V,
    /// <summary>Output of EC-softmax: the attention probabilities.</summary>
    S,
    /// <summary>Output of EC(Attn·V), input of the proj linear.</summary>
    FcOut,
    /// <summary>Input of fc1 (output of EC-LN2).</summary>
    Fc1,
    /// <summary>Input of fc2 (output of EC-GELU).</summary>
    Fc2,
}

public static class Places
{
    public static readonly Place[] All = Enum.GetValues<Place>();

    /// <summary>The name used in configuration, files and on the command line.</summary>
    public static string Key(this Place place) => place switch
    {
        Place.FcQkv => "fc_qkv",
        Place.Q => "q",
        Place.K => "k",
        Place.V => "v",
        Place.S => "s",
        Place.FcOut => "fc_out",
        Place.Fc1 => "fc1",
        Place.Fc2 => "fc2",
        _ => throw new ArgumentOutOfRangeException(nameof(place)),
    };

    public static Place Parse(string key) =>
        All.FirstOrDefault(p => p.Key() == key, (Place)(-1)) is var p && p >= 0
            ? p
            : throw new FormatException($"unknown place '{key}' (places: {string.Join(", ", All.Select(Key))})");
}
