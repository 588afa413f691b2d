//! Charts as inline SVG, drawn on the server: no script and no network, and the page's
//! CSS colours them (light and dark).

use std::fmt::Write;

/// One bar: its label (a time) and the requests let through and refused in it.
pub struct Bar {
    pub label: String,
    pub allowed: u64,
    pub refused: u64,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Stacked bars, allowed below refused, scaled to the tallest; each bar carries a
/// `<title>` with its numbers (a tooltip, and text for screen readers). The bars stretch
/// to the page's width, so the scale and the time labels are HTML around the SVG (text
/// inside it would stretch with the bars).
pub fn bars(bars: &[Bar], caption: &str) -> String {
    let top = bars
        .iter()
        .map(|b| b.allowed + b.refused)
        .max()
        .unwrap_or(0)
        .max(1);
    let slot = WIDTH / bars.len().max(1) as f64;
    let width = (slot * 0.8).max(1.0);
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<figure class="chart-box"><span class="chart-top">{top}</span><svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" preserveAspectRatio="none"><line class="axis" x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}"/>"#,
        escape(caption)
    );
    for (i, bar) in bars.iter().enumerate() {
        let x = i as f64 * slot + (slot - width) / 2.0;
        let allowed = HEIGHT * bar.allowed as f64 / top as f64;
        let refused = HEIGHT * bar.refused as f64 / top as f64;
        let _ = write!(
            html,
            r#"<g><title>{}: {} allowed, {} refused</title><rect class="allowed" x="{x:.1}" y="{:.1}" width="{width:.1}" height="{allowed:.1}"/><rect class="refused" x="{x:.1}" y="{:.1}" width="{width:.1}" height="{refused:.1}"/></g>"#,
            escape(&bar.label),
            bar.allowed,
            bar.refused,
            HEIGHT - allowed,
            HEIGHT - allowed - refused,
        );
    }
    html.push_str(r#"</svg><div class="chart-axis">"#);
    // First, middle and last labels: enough to read the time axis at any width.
    let mut shown: Vec<usize> = vec![0, bars.len() / 2, bars.len().saturating_sub(1)];
    shown.dedup();
    for i in shown.into_iter().filter(|i| *i < bars.len()) {
        let _ = write!(html, "<span>{}</span>", escape(&bars[i].label));
    }
    html.push_str("</div></figure>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, allowed: u64, refused: u64) -> Bar {
        Bar {
            label: label.into(),
            allowed,
            refused,
        }
    }

    #[test]
    fn bars_scale_to_the_tallest_and_stack_refusals_on_top() {
        let svg = bars(&[bar("10:00", 30, 10), bar("11:00", 0, 0)], "requests");
        // The first bar fills the 160 px plot: 30 of 40 allowed is 120 px, 10 refused 40.
        assert!(svg.contains(r#"class="allowed" x="36.0" y="40.0" width="288.0" height="120.0""#));
        assert!(svg.contains(r#"class="refused" x="36.0" y="0.0" width="288.0" height="40.0""#));
        assert!(svg.contains("<title>10:00: 30 allowed, 10 refused</title>"));
        assert!(svg.contains(r#"height="0.0""#));
        assert!(svg.contains(r#"<span class="chart-top">40</span>"#));
        assert!(svg.contains("<span>10:00</span><span>11:00</span></div>"));
    }

    #[test]
    fn labels_and_captions_are_escaped() {
        let svg = bars(&[bar("<b>", 1, 0)], "a \"quoted\" & <tagged> caption");
        assert!(!svg.contains("<b>"));
        assert!(svg.contains("&lt;b&gt;"));
        assert!(svg.contains("a &quot;quoted&quot; &amp; &lt;tagged&gt; caption"));
    }

    #[test]
    fn no_bars_is_an_empty_chart_not_a_division_by_zero() {
        let svg = bars(&[], "nothing yet");
        assert!(svg.contains("aria-label=\"nothing yet\""));
        assert!(!svg.contains("<rect"));
    }
}
