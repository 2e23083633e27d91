"""Synthetic but plausible xiaozhi conversations for the storage benchmark.

Devices are ESP32 boards (MAC-style ids, Espressif OUIs) bound to agents; how busy a device is follows
a Zipf-like law, so a few devices have hundreds of sessions and most have a handful. A session is a
run of turns: the user asks, the assistant answers; about one turn in nine is a tool turn (user,
assistant with ``tool_calls``, tool result, assistant answer), which makes ~10% of the assistant
messages carry tool_calls JSON. Content is mostly Chinese, partly English and partly code-switched
("帮我播放 Taylor Swift 的 Love Story"), from a few characters to a long bedtime story.

Everything is made from word lists below with one seeded ``random.Random``, so a run is repeatable.
Plain-text turns come from a pool of pre-built exchanges (users repeat themselves, as they do on real
devices); tool turns are built fresh so every tool_call id is unique. ``ZH_TERMS`` / ``EN_TERMS`` are
search terms drawn from this vocabulary, common and rare ones.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# ---- vocabulary -----------------------------------------------------------------------------------

# Weighted lists: the first items are common, the last ones rare (weights fall off geometrically).
CITIES_ZH = [
    "北京",
    "上海",
    "广州",
    "深圳",
    "杭州",
    "成都",
    "武汉",
    "西安",
    "南京",
    "重庆",
    "苏州",
    "天津",
    "长沙",
    "青岛",
    "厦门",
    "昆明",
    "大连",
    "郑州",
    "哈尔滨",
    "桂林",
    "拉萨",
    "乌鲁木齐",
    "呼和浩特",
]
CITIES_EN = [
    "Beijing",
    "Shanghai",
    "Shenzhen",
    "London",
    "New York",
    "Tokyo",
    "Singapore",
    "Paris",
    "Sydney",
    "Berlin",
    "Toronto",
    "Seattle",
    "Vancouver",
    "Dubai",
    "Reykjavik",
    "Kathmandu",
]
WEATHER_ZH = ["晴", "多云", "阴", "小雨", "阵雨", "雷阵雨", "中雨", "大雨", "小雪", "雾", "大风", "沙尘"]
WEATHER_EN = ["sunny", "cloudy", "overcast", "drizzling", "rainy", "stormy", "snowy", "foggy", "windy"]
ADVICE_ZH = [
    "出门记得带伞哦。",
    "注意防晒，多喝水。",
    "早晚温差大，记得加件外套。",
    "适合出去走走。",
    "空气质量一般，建议戴口罩。",
    "路面湿滑，开车注意安全。",
    "天气不错，可以去公园放风筝。",
]
ADVICE_EN = [
    "Don't forget your umbrella.",
    "Wear sunscreen and stay hydrated.",
    "Bring a jacket for the evening.",
    "A great day for a walk in the park.",
    "Roads may be slippery, drive carefully.",
]
ANIMALS_ZH = [
    "小猫",
    "小狗",
    "兔子",
    "熊猫",
    "老虎",
    "恐龙",
    "大象",
    "狮子",
    "猴子",
    "小鸟",
    "海豚",
    "企鹅",
    "狐狸",
    "长颈鹿",
    "松鼠",
    "乌龟",
    "刺猬",
    "萤火虫",
    "独角兽",
    "穿山甲",
]
ANIMALS_EN = [
    "cat",
    "puppy",
    "rabbit",
    "panda",
    "tiger",
    "dinosaur",
    "elephant",
    "lion",
    "monkey",
    "dolphin",
    "penguin",
    "fox",
    "giraffe",
    "squirrel",
    "turtle",
    "hedgehog",
    "octopus",
    "narwhal",
]
SINGERS_ZH = [
    "周杰伦",
    "邓紫棋",
    "林俊杰",
    "王菲",
    "陈奕迅",
    "五月天",
    "薛之谦",
    "李荣浩",
    "孙燕姿",
    "蔡依林",
    "毛不易",
    "华晨宇",
    "张学友",
    "腾格尔",
]
SONGS_ZH = [
    "晴天",
    "稻香",
    "七里香",
    "光年之外",
    "江南",
    "红豆",
    "十年",
    "倔强",
    "演员",
    "遇见",
    "青花瓷",
    "小幸运",
    "后来",
    "成都",
    "消愁",
    "夜曲",
    "天路",
]
ARTISTS_EN = [
    "Taylor Swift",
    "Ed Sheeran",
    "Adele",
    "Coldplay",
    "Billie Eilish",
    "Bruno Mars",
    "Queen",
    "The Beatles",
    "Norah Jones",
    "Louis Armstrong",
]
SONGS_EN = [
    "Love Story",
    "Shape of You",
    "Someone Like You",
    "Yellow",
    "Bad Guy",
    "Just the Way You Are",
    "Bohemian Rhapsody",
    "Let It Be",
    "Don't Know Why",
    "What a Wonderful World",
]
GENRES_ZH = ["轻音乐", "儿歌", "摇滚", "古典音乐", "爵士", "民谣", "流行歌", "钢琴曲", "摇篮曲", "相声"]
GENRES_EN = [
    "jazz",
    "classical music",
    "rock",
    "lullabies",
    "piano music",
    "pop songs",
    "folk music",
    "lo-fi beats",
    "saxophone solos",
]
ROOMS_ZH = ["客厅", "卧室", "厨房", "书房", "阳台", "儿童房", "卫生间"]
APPLIANCES_ZH = ["灯", "空调", "电视", "窗帘", "风扇", "加湿器", "扫地机器人", "热水器", "空气净化器"]
THINGS_ZH = [
    ("彩虹", "阳光照在空气中的小水滴上，发生折射和反射，把白光分成了七种颜色"),
    ("月亮", "地球唯一的天然卫星，它自己不发光，我们看到的月光是它反射的太阳光"),
    ("黑洞", "引力特别强的天体，强到连光都逃不出来"),
    ("恐龙", "生活在两亿多年前的爬行动物，大约六千六百万年前灭绝了"),
    ("火山", "地下的岩浆从地壳的裂缝里喷出来形成的山"),
    ("光合作用", "植物利用阳光，把二氧化碳和水变成养分和氧气的过程"),
    ("地震", "地壳快速释放能量时造成的震动"),
    ("闪电", "云层里正负电荷相遇时产生的强烈放电现象"),
    ("潮汐", "海水在月亮和太阳引力作用下周期性的涨落"),
    ("北极光", "太阳风里的带电粒子撞上高层大气时发出的光"),
    ("人工智能", "让计算机学会像人一样理解、学习和解决问题的技术"),
    ("量子计算", "利用量子叠加和纠缠来做计算的新型计算方式"),
]
THINGS_EN = [
    ("rainbow", "sunlight is bent and reflected inside raindrops, which splits white light into colours"),
    ("black hole", "a place where gravity is so strong that not even light can escape"),
    ("volcano", "an opening in the Earth's crust where molten rock, ash and gas escape"),
    ("photosynthesis", "how plants turn sunlight, water and carbon dioxide into food and oxygen"),
    ("tide", "the regular rise and fall of the sea caused by the pull of the Moon and the Sun"),
    ("aurora", "light in the sky made when particles from the Sun hit the upper atmosphere"),
    ("dinosaur", "a group of reptiles that ruled the Earth for more than 160 million years"),
]
WORDS_ZH_EN = [
    ("苹果", "apple"),
    ("老师", "teacher"),
    ("朋友", "friend"),
    ("图书馆", "library"),
    ("蝴蝶", "butterfly"),
    ("生日快乐", "happy birthday"),
    ("谢谢", "thank you"),
    ("西瓜", "watermelon"),
    ("宇航员", "astronaut"),
    ("长颈鹿", "giraffe"),
    ("巧克力", "chocolate"),
    ("冰淇淋", "ice cream"),
    ("幼儿园", "kindergarten"),
    ("消防员", "firefighter"),
    ("彩虹", "rainbow"),
    ("萤火虫", "firefly"),
]
POETS = [
    ("李白", "静夜思", "床前明月光，疑是地上霜。举头望明月，低头思故乡。"),
    ("孟浩然", "春晓", "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"),
    ("王之涣", "登鹳雀楼", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"),
    ("骆宾王", "咏鹅", "鹅鹅鹅，曲项向天歌。白毛浮绿水，红掌拨清波。"),
    ("李绅", "悯农", "锄禾日当午，汗滴禾下土。谁知盘中餐，粒粒皆辛苦。"),
    ("杜甫", "绝句", "两个黄鹂鸣翠柳，一行白鹭上青天。窗含西岭千秋雪，门泊东吴万里船。"),
]
NAMES_ZH = ["小明", "小红", "乐乐", "豆豆", "妞妞", "朵朵", "天天", "果果", "安安", "球球"]
STORY_ZH = [
    "从前，在一片大森林里，住着一只{a}。",
    "{a}每天早上都会去小河边喝水。",
    "有一天，{a}遇到了一只迷路的{b}。",
    "{b}哭着说：“我找不到回家的路了。”",
    "{a}说：“别怕，我陪你一起找。”",
    "它们翻过了一座小山，穿过了一片开满野花的草地。",
    "天渐渐黑了，萤火虫提着小灯笼为它们照亮道路。",
    "路上，它们还遇到了爱唱歌的小鸟和爱睡觉的小熊。",
    "终于，它们在一棵大橡树下找到了{b}的家。",
    "{b}的妈妈非常感谢{a}，送给它一篮子香甜的果子。",
    "从那以后，{a}和{b}成了最好的朋友。",
    "这个故事告诉我们，帮助别人也会让自己很快乐。",
    "好啦，故事讲完了，闭上眼睛，做个好梦吧。",
]
STORY_EN = [
    "Once upon a time, a little {a} lived at the edge of a quiet forest.",
    "Every morning the {a} walked down to the river to say hello to the fish.",
    "One rainy day, the {a} met a {b} who had lost its way home.",
    '"Don\'t worry," said the {a}, "we will find your home together."',
    "They crossed a wooden bridge, climbed a hill and followed the fireflies.",
    "At last they found the {b}'s house under a big oak tree.",
    "The {b}'s family was so happy that they had a picnic with honey cake.",
    "From that day on, the {a} and the {b} were the best of friends.",
    "The end. Sleep tight and sweet dreams!",
]
CHAT_ZH = [
    ("你好", "你好呀！我是小智，今天想聊点什么？"),
    ("你叫什么名字", "我叫小智，是你的语音小助手。"),
    ("我今天好累啊", "辛苦啦，要不要听首轻音乐放松一下？早点休息哦。"),
    ("谢谢你", "不客气，能帮到你我很开心！"),
    ("你几岁了", "我是一个人工智能助手，没有年龄哦，不过我每天都在学习新东西。"),
    ("讲个笑话", "好呀：小明问爸爸，为什么海是咸的？爸爸说，因为鱼在里面哭了太多次。"),
    ("我想睡觉了", "好的，晚安！祝你做个甜甜的梦。"),
    ("现在几点了", "现在是北京时间{h}点{m}分。"),
    ("今天星期几", "今天是星期{w}。"),
    ("你喜欢什么颜色", "我喜欢天空一样的蓝色，你呢？"),
    ("我考试考了一百分", "哇，太棒了！你一定很努力，继续加油！"),
    ("再见", "再见，有需要随时叫我哦！"),
]
CHAT_EN = [
    ("Hello", "Hi there! I'm Xiaozhi. What would you like to talk about?"),
    ("What's your name?", "I'm Xiaozhi, your voice assistant."),
    ("Tell me a joke", "Why did the scarecrow win an award? Because he was outstanding in his field!"),
    ("Thank you", "You're welcome! Happy to help."),
    ("Good night", "Good night! Sleep well."),
    ("What time is it?", "It's {h}:{m:02d} right now."),
    ("How are you?", "I'm doing great, thanks for asking!"),
]
FILLER_ZH = [
    "还有什么我可以帮你的吗？",
    "如果还想了解更多，可以继续问我哦。",
    "希望对你有帮助。",
    "这个问题问得很好！",
    "我们一起来看看吧。",
    "你真是个爱思考的小朋友。",
    "需要的话我可以再讲详细一点。",
    "对了，今天记得多喝水哦。",
    "要不要我再给你讲个小故事？",
    "学习累了就休息一下，眼睛也要放松。",
    "有不明白的地方随时问我。",
    "我们下次再一起探索更多有趣的知识吧！",
    "你今天过得怎么样？",
    "听起来很有意思，能再多告诉我一些吗？",
    "别忘了跟爸爸妈妈分享今天学到的东西。",
    "晚上早点睡觉，身体才会棒棒的。",
    "我随时都在，想聊天就叫我小智。",
    "这是一个很常见的问题，很多小朋友都问过我。",
    "我们可以一起查一查资料。",
    "如果你喜欢，我明天还可以继续讲。",
    "保持好奇心是最棒的学习方法。",
    "记得周末出去运动运动。",
]
FILLER_EN = [
    "Anything else I can help with?",
    "Hope that helps!",
    "Great question!",
    "Let me know if you want more.",
    "Would you like to hear another one?",
    "Remember to drink some water today.",
    "I'm always here if you want to chat.",
    "That's a really interesting thing to wonder about.",
    "We can look it up together next time.",
    "Have a wonderful day!",
    "Curiosity is the best teacher.",
    "Tell me more about your day!",
    "Don't forget to take a break from the screen.",
]

TOOLS = {
    "weather": "get_weather",
    "music": "play_music",
    "alarm": "set_alarm",
    "device": "control_device",
    "volume": "set_volume",
}

# Search terms from the vocabulary above, from very common to rare (1–4 Chinese characters; English words).
ZH_TERMS = [
    "天气",
    "故事",
    "播放",
    "北京",
    "空调",
    "恐龙",
    "熊猫",
    "的",
    "雨",
    "猫",
    "灯",
    "诗",
    "周杰伦",
    "长颈鹿",
    "晚安",
    "萤火虫",
    "生日快乐",
    "光合作用",
    "乌鲁木齐",
    "穿山甲",
    "腾格尔",
    "北极光",
    "扫地机器人",
    "量子",
    "静夜思",
    "图书馆",
    "雷阵雨",
    "鹅",
    "橡树",
    "沙尘",
]
EN_TERMS = [
    "weather",
    "the",
    "music",
    "story",
    "play",
    "rainy",
    "dinosaur",
    "timer",
    "giraffe",
    "jazz",
    "umbrella",
    "Shanghai",
    "volcano",
    "photosynthesis",
    "saxophone",
    "narwhal",
    "Reykjavik",
    "aurora",
    "hedgehog",
    "firefly",
    "Coldplay",
    "lullabies",
    "astronaut",
    "kindergarten",
]

ESPRESSIF_OUIS = ["24:0a:c4", "30:ae:a4", "7c:9e:bd", "a4:cf:12", "84:f3:eb", "ec:62:60", "34:85:18", "c8:2b:96"]


def _geo(rng: random.Random, items: list[Any], ratio: float = 0.85) -> Any:
    """Pick with weights falling off geometrically: early items common, late ones rare."""
    weights = _WEIGHTS.get((len(items), ratio))
    if weights is None:
        acc, w, weights = 0.0, 1.0, []
        for _ in items:
            acc += w
            weights.append(acc)
            w *= ratio
        _WEIGHTS[(len(items), ratio)] = weights
    return rng.choices(items, cum_weights=weights)[0]


_WEIGHTS: dict[tuple[int, float], list[float]] = {}

# A message as planned: (role, content, tool_calls, tool_call_id)
Msg = tuple[str, str, list[dict[str, Any]] | None, str | None]


# ---- exchanges (one turn: user + assistant) ------------------------------------------------------


def _fill(rng: random.Random, n: int, pool: list[str]) -> str:
    return "".join(rng.sample(pool, min(n, len(pool))))


def _zh_weather(rng: random.Random) -> tuple[str, str]:
    city, w = _geo(rng, CITIES_ZH), _geo(rng, WEATHER_ZH)
    lo = rng.randint(-15, 25)
    user = rng.choice(
        [
            f"{city}今天天气怎么样",
            f"明天{city}会下雨吗",
            f"{city}这周末冷不冷",
            f"查一下{city}的天气预报",
            f"我要去{city}出差，那边天气如何",
        ]
    )
    reply = f"{city}今天{w}，气温{lo}到{lo + rng.randint(3, 12)}度，{rng.choice(ADVICE_ZH)}"
    return user, reply


def _zh_music(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    if r < 0.55:
        singer, song = _geo(rng, SINGERS_ZH), _geo(rng, SONGS_ZH)
        return rng.choice(
            [f"播放{singer}的{song}", f"我想听{singer}的歌", f"来一首{song}"]
        ), f"好的，正在为你播放{singer}的《{song}》。"
    if r < 0.8:
        genre = _geo(rng, GENRES_ZH)
        return rng.choice(
            [f"放点{genre}", f"我想听{genre}", f"播放一些{genre}"]
        ), f"好的，为你播放{genre}，祝你听得开心。"
    artist, song = _geo(rng, ARTISTS_EN), _geo(rng, SONGS_EN)
    return f"帮我播放 {artist} 的 {song}", f"好的，正在播放 {artist} 的《{song}》。"


def _zh_story(rng: random.Random) -> tuple[str, str]:
    a, b = _geo(rng, ANIMALS_ZH), _geo(rng, ANIMALS_ZH)
    user = rng.choice([f"给我讲一个关于{a}的故事", f"讲个{a}的故事", "我想听睡前故事", f"讲一个{a}和{b}的故事"])
    n = rng.randint(3, len(STORY_ZH))
    body = "".join(s.format(a=a, b=b) for s in STORY_ZH[: n - 1]) + STORY_ZH[-1]
    return user, f"好的，我给你讲一个{a}的故事。" + body


def _zh_alarm(rng: random.Random) -> tuple[str, str]:
    h, mins = rng.randint(5, 9), rng.choice([0, 10, 15, 20, 30, 45])
    if rng.random() < 0.5:
        t = f"{h}点半" if mins == 30 else f"{h}点" if mins == 0 else f"{h}点{mins}分"
        return f"明天早上{t}叫我起床", f"好的，已经为你设置明天早上{t}的闹钟。"
    n = rng.choice([1, 3, 5, 10, 15, 20, 25, 30, 45, 60])
    return f"设置一个{n}分钟的倒计时", f"好的，{n}分钟倒计时开始，时间到了我会提醒你。"


def _zh_math(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 999), rng.randint(1, 99)
    op, res = rng.choice([("加", a + b), ("减", a - b), ("乘以", a * b)])
    return f"{a}{op}{b}等于多少", f"{a}{op}{b}等于{res}。" + (rng.choice(FILLER_ZH) if rng.random() < 0.3 else "")


def _zh_knowledge(rng: random.Random) -> tuple[str, str]:
    thing, expl = _geo(rng, THINGS_ZH, 0.8)
    user = rng.choice([f"{thing}是什么", f"为什么会有{thing}", f"给我讲讲{thing}", f"{thing}是怎么形成的"])
    return user, f"{thing}是{expl}。" + _fill(rng, rng.randint(0, 3), FILLER_ZH)


def _zh_translate(rng: random.Random) -> tuple[str, str]:
    zh, en = _geo(rng, WORDS_ZH_EN, 0.9)
    if rng.random() < 0.6:
        return f"{zh}用英语怎么说", f"“{zh}”的英文是 {en}。你可以跟我读一遍：{en}。"
    return f"{en}是什么意思", f"{en} 的意思是“{zh}”。例如：I like {en}. 我喜欢{zh}。"


def _zh_poem(rng: random.Random) -> tuple[str, str]:
    poet, title, text = rng.choice(POETS)
    return rng.choice(
        [f"背一首{poet}的诗", f"{title}怎么背", "给我念一首古诗"]
    ), f"好的，这是{poet}的《{title}》：{text}" + (rng.choice(FILLER_ZH) if rng.random() < 0.5 else "")


def _zh_device(rng: random.Random) -> tuple[str, str]:
    room, app = _geo(rng, ROOMS_ZH), _geo(rng, APPLIANCES_ZH)
    if app == "空调":
        n = rng.randint(16, 30)
        return f"把{room}的空调调到{n}度", f"好的，{room}空调已调到{n}度。"
    on = rng.random() < 0.6
    return f"{'打开' if on else '关掉'}{room}的{app}", f"好的，已经{'打开' if on else '关闭'}{room}的{app}。"


def _zh_chat(rng: random.Random) -> tuple[str, str]:
    user, reply = rng.choice(CHAT_ZH)
    name = rng.choice(NAMES_ZH)
    if rng.random() < 0.3:
        user = f"我是{name}，" + user
        reply = f"{name}，" + reply
    return user, reply.format(h=rng.randint(0, 23), m=rng.randint(0, 59), w=rng.choice("一二三四五六日"))


def _en_weather(rng: random.Random) -> tuple[str, str]:
    city, w = _geo(rng, CITIES_EN), _geo(rng, WEATHER_EN)
    lo = rng.randint(-10, 25)
    user = rng.choice(
        [
            f"What's the weather like in {city} today?",
            f"Will it rain in {city} tomorrow?",
            f"Do I need an umbrella in {city}?",
        ]
    )
    return (
        user,
        f"It's {w} in {city} today, between {lo} and {lo + rng.randint(3, 10)} degrees. {rng.choice(ADVICE_EN)}",
    )


def _en_music(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.6:
        artist, song = _geo(rng, ARTISTS_EN), _geo(rng, SONGS_EN)
        return f"Play {song} by {artist}", f"Sure, playing {song} by {artist}."
    genre = _geo(rng, GENRES_EN)
    return f"Play some {genre}", f"Okay, here is some {genre}. Enjoy!"


def _en_story(rng: random.Random) -> tuple[str, str]:
    a, b = _geo(rng, ANIMALS_EN), _geo(rng, ANIMALS_EN)
    n = rng.randint(3, len(STORY_EN))
    body = " ".join(s.format(a=a, b=b) for s in STORY_EN[: n - 1]) + " " + STORY_EN[-1]
    return rng.choice([f"Tell me a story about a {a}", "Tell me a bedtime story"]), body


def _en_timer(rng: random.Random) -> tuple[str, str]:
    n = rng.choice([1, 2, 5, 10, 15, 20, 30, 45])
    return f"Set a timer for {n} minutes", f"Timer set for {n} minutes. I'll let you know when it's done."


def _en_knowledge(rng: random.Random) -> tuple[str, str]:
    thing, expl = _geo(rng, THINGS_EN, 0.8)
    art = "an" if thing[0] in "aeiou" else "a"
    return rng.choice(
        [f"What is {art} {thing}?", f"Can you explain {thing}?"]
    ), f"{art.capitalize()} {thing} is {expl}. " + rng.choice(FILLER_EN)


def _en_math(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 500), rng.randint(1, 50)
    return f"What is {a} times {b}?", f"{a} times {b} is {a * b}."


def _en_chat(rng: random.Random) -> tuple[str, str]:
    user, reply = rng.choice(CHAT_EN)
    return user, reply.format(h=rng.randint(0, 23), m=rng.randint(0, 59))


_ZH: list[tuple[float, Callable[[random.Random], tuple[str, str]]]] = [
    (14, _zh_weather),
    (14, _zh_music),
    (10, _zh_story),
    (8, _zh_alarm),
    (8, _zh_math),
    (10, _zh_knowledge),
    (8, _zh_translate),
    (6, _zh_poem),
    (8, _zh_device),
    (14, _zh_chat),
]
_EN: list[tuple[float, Callable[[random.Random], tuple[str, str]]]] = [
    (16, _en_weather),
    (14, _en_music),
    (12, _en_story),
    (10, _en_timer),
    (12, _en_knowledge),
    (8, _en_math),
    (16, _en_chat),
]


def _cum(table: list[tuple[float, Any]]) -> tuple[list[Any], list[float]]:
    acc, out = 0.0, []
    for w, _ in table:
        acc += w
        out.append(acc)
    return [f for _, f in table], out


# ---- tool turns ------------------------------------------------------------------------------------


def _tool_turn(rng: random.Random, lang: str) -> tuple[Msg, ...]:
    call_id = "call_" + uuid.UUID(int=rng.getrandbits(128)).hex[:24]
    kind = rng.choice(list(TOOLS))
    if kind == "weather":
        city = _geo(rng, CITIES_ZH if lang == "zh" else CITIES_EN)
        args: dict[str, Any] = {"city": city, "date": rng.choice(["today", "tomorrow"])}
        temp, w = rng.randint(-10, 35), _geo(rng, WEATHER_ZH if lang == "zh" else WEATHER_EN)
        result = {"city": city, "temperature": temp, "condition": w, "humidity": rng.randint(20, 95)}
        user = f"{city}现在多少度" if lang == "zh" else f"How warm is it in {city} right now?"
        final = f"{city}现在{temp}度，{w}。" if lang == "zh" else f"It's {temp} degrees and {w} in {city} right now."
    elif kind == "music":
        singer, song = (
            (_geo(rng, SINGERS_ZH), _geo(rng, SONGS_ZH))
            if lang == "zh"
            else (_geo(rng, ARTISTS_EN), _geo(rng, SONGS_EN))
        )
        args = {"artist": singer, "title": song}
        result = {"status": "playing", "track_id": rng.randint(10_000, 99_999), "duration_s": rng.randint(150, 320)}
        user = f"用音乐APP播放{singer}的{song}" if lang == "zh" else f"Open the music app and play {song}"
        final = f"已开始播放《{song}》。" if lang == "zh" else f"Now playing {song} by {singer}."
    elif kind == "alarm":
        h, m = rng.randint(5, 9), rng.choice([0, 15, 30, 45])
        args = {"time": f"{h:02d}:{m:02d}", "repeat": rng.choice(["once", "weekdays", "daily"])}
        result = {"ok": True, "alarm_id": rng.randint(1, 999)}
        user = f"每天早上{h}点{m}分叫我" if lang == "zh" else f"Wake me up at {h}:{m:02d} every day"
        final = f"闹钟已设好：{h:02d}:{m:02d}。" if lang == "zh" else f"Done, your alarm is set for {h}:{m:02d}."
    elif kind == "device":
        room, app = _geo(rng, ROOMS_ZH), _geo(rng, APPLIANCES_ZH)
        args = {"room": room, "device": app, "action": rng.choice(["on", "off"])}
        result = {"ok": True, "state": args["action"]}
        user = (
            f"帮我把{room}的{app}{'打开' if args['action'] == 'on' else '关了'}"
            if lang == "zh"
            else f"Turn {args['action']} the {app} in the {room}"
        )
        final = f"{room}的{app}已{'打开' if args['action'] == 'on' else '关闭'}。" if lang == "zh" else "Done."
    else:
        level = rng.randint(0, 100)
        args = {"level": level}
        result = {"ok": True, "volume": level}
        user = f"音量调到{level}" if lang == "zh" else f"Set the volume to {level}"
        final = f"音量已调到{level}。" if lang == "zh" else f"Volume set to {level}."
    calls = [
        {
            "id": call_id,
            "type": "function",
            "function": {"name": TOOLS[kind], "arguments": json.dumps(args, ensure_ascii=False)},
        }
    ]
    ack = rng.choice(["", "好的，我来处理。", "稍等一下。"] if lang == "zh" else ["", "One moment."])
    return (
        ("user", user, None, None),
        ("assistant", ack, calls, None),
        ("tool", json.dumps(result, ensure_ascii=False), None, call_id),
        ("assistant", final, None, None),
    )


# ---- sessions --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionPlan:
    session_id: str
    device_id: str
    agent_id: str
    start_ts: float  # unix seconds
    messages: tuple[Msg, ...]
    offsets: tuple[float, ...]  # seconds after start_ts, one per message


@dataclass
class Dataset:
    sessions: list[SessionPlan]
    devices: list[str]
    agents: list[str]
    start_ts: float
    end_ts: float
    sessions_per_device: dict[str, int]

    @property
    def message_count(self) -> int:
        return sum(len(s.messages) for s in self.sessions)


def build_dataset(
    *,
    sessions: int,
    per_session: int,
    devices: int = 2000,
    agents: int = 40,
    days: float = 60.0,
    now: float,
    seed: int = 1,
    tool_turn_share: float = 1 / 9,
) -> Dataset:
    """Plan ``sessions`` sessions of ``per_session`` messages each, oldest first (ids follow time)."""
    rng = random.Random(seed)
    agent_ids = [f"agent-{rng.getrandbits(32):08x}" for _ in range(agents)]
    macs: set[str] = set()
    while len(macs) < devices:
        tail = rng.getrandbits(24)
        macs.add(f"{rng.choice(ESPRESSIF_OUIS)}:{tail >> 16:02x}:{(tail >> 8) & 255:02x}:{tail & 255:02x}")
    device_ids = sorted(macs)
    rng.shuffle(device_ids)
    device_agent = {d: agent_ids[min(int(rng.paretovariate(1.2)) - 1, agents - 1)] for d in device_ids}
    dev_cum, acc = [], 0.0
    for rank in range(devices):
        acc += 1.0 / (rank + 8) ** 0.9  # Zipf-like: a few busy devices, a long tail of quiet ones
        dev_cum.append(acc)

    # Exchange pools: people ask the same things over and over, so plain turns are reused.
    zh_fns, zh_cum = _cum(_ZH)
    en_fns, en_cum = _cum(_EN)
    pool_size = max(2000, min(150_000, sessions * per_session // 8))
    pools: dict[str, list[tuple[Msg, Msg]]] = {}
    for lang, fns, cum in (("zh", zh_fns, zh_cum), ("en", en_fns, en_cum)):
        n = pool_size if lang == "zh" else pool_size // 3
        pool = []
        filler = FILLER_ZH if lang == "zh" else FILLER_EN
        sep = "" if lang == "zh" else " "
        for _ in range(n):
            user, reply = rng.choices(fns, cum_weights=cum)[0](rng)
            if rng.random() < 0.55:  # LLM replies ramble on a little, each differently
                reply = sep.join([reply, *rng.sample(filler, rng.choice((1, 1, 2, 3)))])
            pool.append((("user", user, None, None), ("assistant", reply, None, None)))
        pools[lang] = pool

    # Start times: uniform days, busier in the morning and evening; sorted so ids follow time.
    hour_w = [1, 1, 1, 1, 1, 2, 4, 7, 8, 6, 5, 5, 6, 5, 5, 6, 7, 9, 11, 12, 11, 8, 4, 2]
    hour_cum = [sum(hour_w[: i + 1]) for i in range(24)]
    start0 = now - days * 86400
    day0 = start0 - start0 % 86400
    starts = []
    for _ in range(sessions):
        day = rng.randrange(int(days))
        hour = rng.choices(range(24), cum_weights=hour_cum)[0]
        ts = day0 + day * 86400 + hour * 3600 + rng.random() * 3600
        starts.append(min(max(ts, start0), now - 3600))
    starts.sort()

    plans: list[SessionPlan] = []
    per_device: dict[str, int] = {}
    for ts in starts:
        device = rng.choices(device_ids, cum_weights=dev_cum)[0]
        per_device[device] = per_device.get(device, 0) + 1
        r = rng.random()
        lang = "zh" if r < 0.78 else "en" if r < 0.93 else "mix"
        msgs: list[Msg] = []
        offsets: list[float] = []
        t = 0.0
        while len(msgs) < per_session:
            turn_lang = lang if lang != "mix" else ("zh" if rng.random() < 0.6 else "en")
            if rng.random() < tool_turn_share:
                turn: tuple[Msg, ...] = _tool_turn(rng, turn_lang)
            else:
                turn = rng.choice(pools[turn_lang])
            for msg in turn:
                if len(msgs) == per_session:
                    break
                msgs.append(msg)
                offsets.append(t)
                t += (
                    rng.uniform(0.3, 1.0)
                    if msg[0] == "tool"
                    else rng.uniform(1.0, 4.0)
                    if msg[0] == "user"
                    else rng.uniform(5.0, 60.0)
                )
        plans.append(
            SessionPlan(
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                device,
                device_agent[device],
                ts,
                tuple(msgs),
                tuple(offsets),
            )
        )
    return Dataset(plans, device_ids, agent_ids, start0, now, per_device)
