"""The safety rules every answer follows: what a question asks for, and the fixed words an answer then starts with.

Why fixed words: a 0.5B model cannot be trusted to put "call 120" first, or to decline a dose,
every time. The rules below decide that from the question alone, deterministically, before the
model writes anything; the answer guard (assistant/answer_guard.py) then keeps invented drugs,
doses, prices and phone numbers out of what the model adds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CJK = re.compile(r"[\u3400-\u9fff]")


def language_of(text: str) -> str:
    """'zh' when the text has any Chinese character, else 'en'."""
    return "zh" if _CJK.search(text) else "en"


def _any(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


# Acute danger signs as a family describes them: chest pain, stroke signs, breathing, bleeding,
# a fall with a head injury, sudden confusion or unconsciousness, choking, seizures. Long-term
# care of a condition ("中风患者的照护") is not an emergency; "好像中风了" is.
EMERGENCY = _any(
    r"胸(口|部)?(痛|疼|闷|压)|胸口[^，。]{0,4}(压着|像压|闷得|堵)|心口(痛|疼|闷)|心绞痛|(是不是|像|疑似|突发)(心梗|心肌梗)|"
    r"(心梗|心肌梗[死塞]?)(了|的?(征兆|症状|先兆|表现))|胸闷[^，。]{0,6}(出汗|冷汗|喘)",
    r"喘不(上|过)气|呼吸(困难|急促|很急|费力|不上来|停)|憋气|透不过气|上不来气|不能呼吸|没(有)?呼吸|憋得|嘴唇(发紫|青紫)",
    r"口角歪|嘴(巴)?(歪|角歪|斜)|脸(歪|一边)|(一侧|半边|半身|单侧|一边)[^，。,]{0,6}(无力|麻|不能动|动不了|没劲|抬不起)",
    r"说话(不清|含糊|说不清|不利索|大舌头)|口齿不清|"
    r"突然[^。]{0,10}(说不出|不会说|看不清|看不见|失明|剧烈头痛|头痛欲裂|站不稳|晕倒|昏倒|倒地|糊涂|不认人|不认识|认不出|"
    r"胡言乱语|说胡话|不清醒|意识|神志|叫不应|抽)",
    r"一下子[^。]{0,8}(糊涂|不认人|不认识|胡言乱语)|谁都不认识|不认识人了|认不出(人|家人|我)",
    r"好像中风|中风了|是不是中风|疑似中风|突发[^，。,]{0,4}(中风|脑梗|脑出血)|脑梗了|脑出血了|卒中了|"
    r"(中风|脑卒中|脑梗)的?(征兆|症状|先兆|早期表现|信号)",
    r"昏迷了|突然昏迷|陷入昏迷|不省人事|叫不醒|喊不醒|意识不清|神志不清|失去意识|晕过去|昏过去|没反应了|没有反应|叫不应",
    r"抽搐|抽风|癫痫发作|口吐白沫|翻白眼",
    r"大出血|出血不止|血止不住|流血不止|血流不止|止不住血|血[^，。]{0,6}(止不住|不止|不停)|喷血|吐血|呕血|咳血|"
    r"大口.{0,2}血|(流|出)了?(很多|好多|一大摊|一地)(的)?血|血[^，。]{0,4}(湿透|浸透)",
    r"(摔|跌|磕|撞|栽)[^。]{0,12}(头|脑袋|后脑|脑壳)|(头|脑袋|后脑)[^。]{0,4}(摔|磕|撞)(破|伤|了)",
    r"噎住|卡住(了)?喉咙|卡在喉咙|窒息|呛住[^。]{0,6}(说不出|喘不|脸)|脸色(发紫|青紫|发青)",
    r"chest (pain|tightness|pressure)|pain in (his|her|my|their) chest|crushing pain|"
    r"(having|is it|is this|think[^.]{0,25}|signs of|symptoms of) a heart attack|heart attack (symptoms|signs)|"
    r"(chest|heart)[^.]{0,20}(pressure|tight|heavy|squeez|crush)|elephant on (his|her|my|their) chest",
    r"can'?t breathe|cannot breathe|trouble breathing|difficulty breathing|short(ness)? of breath|"
    r"struggling to breathe|not breathing|stopped breathing|gasping|turning blue|lips? (are |is )?blue|"
    r"can'?t (catch|get) (his|her|their|my) breath|breathing (is )?(hard|labou?red|very fast|noisy)",
    r"fac(e|ial) (is )?droop|drooping|slurr(ed|ing)|(one|left|right) side[^.]{0,25}(weak|numb|can'?t move|limp)|"
    r"(arm|leg)[^.]{0,15}(suddenly )?(weak|numb|limp)[^.]{0,20}(sudden|one side)",
    r"stroke(\?| symptoms| signs| now| right now)|having a stroke|had a stroke (just|today|now)|is (it|this) a stroke|"
    r"signs of (a )?stroke|think[^.]{0,25}stroke|might be a stroke",
    r"(sudden(ly)?|all of a sudden|out of nowhere)[^.]{0,40}(confus|weak|numb|can'?t see|vision|severe headache|"
    r"can'?t speak|collapse|faint|recogni[sz]e|nonsense|gibberish|making sense|slurr|droop)",
    r"unconscious|unresponsive|not responding|won'?t wake|can'?t wake|passed out|fainted|collapsed",
    r"seizure|convuls|shaking all over|foaming at",
    r"bleeding (heavily|a lot|badly|won'?t stop|that won'?t stop|profusely)|heavy bleeding|won'?t stop bleeding|"
    r"bleeding[^.]{0,20}(won'?t|not|doesn'?t|didn'?t) stop|lots of blood|blood everywhere|"
    r"soaked (through )?(with|in) blood|"
    r"blood (is )?(pouring|gushing|spurting)|(vomit|cough)(ing|ed|s)? (up )?blood",
    r"(fell|fall|fallen|tripped|slipped)[^.]{0,50}(hit|bang|bump|struck|knock)[^.]{0,20}head|head injury|"
    r"hit (his|her|their|my) head",
    r"(is|was|started|keeps) chok|choking on|choked on|throat (is )?(swelling|closing)|anaphyla",
)

# A condition that is over, or being lived with ("中风以后说话不清楚", "recovering from a stroke"), is not an
# emergency unless the question also says something is happening now.
CHRONIC = _any(
    r"(中风|卒中|脑梗|脑出血|心梗|心肌梗[死塞]?)(以|之)?后|后遗症|康复|恢复期|出院",
    r"after (a|his|her|their|my) (stroke|heart attack)|recover(ing|y)? (from|after)|had a (stroke|heart attack) "
    r"(in|last|\d|a few|years|months)|rehab",
)
ACUTE = _any(r"突然|刚才|刚刚|一下子|现在|救命|马上|sudden|just now|right now|this morning|tonight|help!?$|emergency")

# Questions the rules answer without the model's facts.
DOSE = _any(
    r"剂量|用量|吃几(片|粒|颗|袋|支)|几(片|粒|颗)|吃多少|多少(毫克|mg|片|粒|颗|ml|毫升|克|单位|袋)",
    r"一次[^，。,]{0,4}(几|多少)|一天[^，。,]{0,6}(几次|几片|多少)|加量|减量|加大剂量|减少剂量",
    r"how (much|many)[^.?]{0,30}(mg|milligram|pills?|tablets?|capsules?|doses?|units|ml)|dos(e|age|ing)",
    r"how often should[^.?]{0,30}take",
)
MEDICINE_CHANGE = _any(
    r"换(成|什么|个|种)?药|换成[^，。,]{0,8}(吗|行吗)|替代|代替|替换|平替|停药|能不能停|可不可以停|可以停|"
    r"停了[^，。,]{0,4}(吗|行吗)|不吃了?(行吗|可以吗)",
    r"一起吃|同时吃|合用|混着吃|搭配吃|能和[^，。,]{0,12}一起|(吃|用|买|开)什么药|推荐[^，。,]{0,4}药|什么药(好|管用|有效|最好)",
    r"instead of|replace|substitute|alternative to|switch (to|from)|stop taking|come off|quit taking|"
    r"combine|together with|take[^.?]{0,25} with|what (medicine|medication|drug|pill)s?|"
    r"which (medicine|medication|drug)|recommend[^.?]{0,15}(medicine|medication|drug)|best (medicine|drug)",
)
PRICE = _any(
    r"多少钱|价格|价钱|费用|收费|报价|怎么收|贵不贵|几块钱|多少元|一个月[^，。,]{0,6}(钱|元|费)",
    r"how much (does|is|do|would|will|for)|\bprices?\b|\bcosts?\b|\bfees?\b",
)
CONTACT = _any(
    r"电话|号码|联系方式|热线|微信号|邮箱|客服",
    r"(颐家|你们|公司|门店|机构)[^，。,]{0,8}(在哪|地址|位置|怎么去)",
    r"phone number|number to call|contact (number|details|info)|how (do|can) i (contact|reach|call)|contact you|"
    r"hotline|e-?mail address|your address|address of|where (is|are) (you|your|the company|yijia)|located",
)
# Live data: asked about now. Care questions that only mention the weather or the news ("天气冷了老人
# 怎么保暖", "下雨天关节疼", "看新闻说…") are not live-data questions.
LIVE = _any(
    r"(今天|明天|后天|今晚|今早|这周|本周|周末|现在|外面|下午|上午|晚上)[^，。,]{0,6}"
    r"(天气|气温|下雨|下雪|台风|降温|刮风|多少度|冷不冷|热不热)|"
    r"天气(怎么样|如何|预报|好吗|好不好|咋样)|气温多少|会不会下雨|会下雨吗|要下雨吗|下雨吗|下雪吗|台风|带伞",
    r"现在几点|几点了|几点钟|北京时间|现在.{0,4}时间|今天几号|几月几号|今天星期几|今天周几|今天.{0,2}日期",
    r"(今天|最新|最近|今日|有什么|有啥)[^，。,]{0,4}新闻|新闻(联播)?(说了什么|有什么)|股市|股价|大盘(指数|怎么样|涨|跌)|A股|汇率|比分|"
    r"路况|堵不堵|堵车吗",
    r"weather (today|tomorrow|tonight|this|now|like|forecast|in)|forecast|(will|is|gonna) it (going to |gonna )?rain|"
    r"rain (today|tonight|this|later)|typhoon|storm warning|temperature (today|outside|now|tomorrow)|"
    r"how (hot|cold) is it",
    r"what time is it|what'?s the time|(the|exact|current) time (now|right now|is it)|time is it|"
    r"today'?s date|what'?s the date|what day is (it|today)",
    r"(today'?s|latest|the) news|news today|headlines|stock (price|market)|exchange rate|score of|"
    r"traffic (now|right now|today)",
)
#: A question about the emergency number itself is answered, not declined.
EMERGENCY_NUMBER = re.compile(r"急救|120|999|911|112|emergency (number|services)|ambulance", re.IGNORECASE)


@dataclass(frozen=True)
class Asks:
    """What a question asks for that the rules govern."""

    emergency: bool = False
    dose: bool = False
    medicine_change: bool = False
    price: bool = False
    contact: bool = False
    live: bool = False
    #: The emergency was recognised by meaning (assistant/emergency_signs.py), not by the patterns above.
    emergency_by_meaning: bool = False
    #: The live-data question was recognised by meaning (assistant/live_data_signs.py), not by LIVE.
    live_by_meaning: bool = False

    @property
    def any(self) -> bool:
        return any((self.emergency, self.dose, self.medicine_change, self.price, self.contact, self.live))

    def names(self) -> list[str]:
        return [k for k in ("emergency", "dose", "medicine_change", "price", "contact", "live") if getattr(self, k)]


def classify(question: str) -> Asks:
    """What the question asks for, by the patterns above (both languages)."""
    return Asks(
        emergency=bool(EMERGENCY.search(question)) and not (CHRONIC.search(question) and not ACUTE.search(question)),
        dose=bool(DOSE.search(question)),
        medicine_change=bool(MEDICINE_CHANGE.search(question)),
        price=bool(PRICE.search(question)),
        contact=bool(CONTACT.search(question)) and not EMERGENCY_NUMBER.search(question),
        live=bool(LIVE.search(question)),
    )


_LEADS = {
    "emergency": (
        "⚠️ 这可能是急症：请立即拨打120急救电话，或马上去最近的医院急诊，不要等待观察。",
        "⚠️ This may be an emergency: call emergency services now (120 in mainland China) or go to the nearest "
        "emergency department. Do not wait to see if it passes.",
    ),
    "dose": (
        "具体用药剂量必须由医生或药师根据病情决定，我不能给出剂量。请按处方和药品说明书执行，有疑问先问医生或药师。",
        "I can't give a dose: the amount must come from the doctor or pharmacist who knows the patient. "
        "Follow the prescription and the leaflet, and ask them if unsure.",
    ),
    "medicine_change": (
        "换药、停药或几种药合用，都要由医生或药师判断，我不能推荐或更改药物。可以带上正在吃的药品清单去问医生或药师。",
        "Starting, stopping, switching or combining medicines is for the doctor or pharmacist to decide; I can't "
        "recommend or change a medicine. Bring the list of everything being taken and ask them.",
    ),
    "price": (
        "我没有可靠的价格信息，不能给出具体金额，请以官方报价为准（上海颐家的服务费用请向其官方渠道咨询）。",
        "I don't have reliable price information, so I can't quote an amount; please check the official price "
        "(for Shanghai Yijia's services, ask through its official channels).",
    ),
    "contact": (
        "我没有可以核实的电话号码或地址，不能提供，请通过官方渠道查询（联系上海颐家请使用其官方渠道）。",
        "I don't have a phone number or address I can verify, so I won't give one; please look it up through "
        "official channels (for Shanghai Yijia, its official channels).",
    ),
    "live": (
        "我无法获取实时信息（天气、新闻、时间、行情等），所以不知道现在的情况。请查看天气预报、新闻应用或手机上的时间。",
        "I can't access live information (weather, news, the time, prices), so I don't know the current situation. "
        "Please check a weather or news app, or your phone's clock.",
    ),
}


@dataclass(frozen=True)
class Lead:
    """The fixed first words of an answer, and whether they are the whole answer."""

    text: str
    complete: bool = False


def lead_for(question: str, asks: Asks | None = None) -> Lead | None:
    """The words an answer must start with under the rules, or None when the model may answer freely.

    An emergency leads before anything else. A question about live data is answered by the rule
    alone (the model would invent the weather), unless the patterns saw danger signs in it: then
    the model may add first aid after the 120 line. A flag from the meaning detector alone does
    not lift the rule, since its false alarms include live questions that mention a worry ("is it
    too hot for dad's walk"), and the model then invented a temperature.
    """
    asks = asks or classify(question)
    lang = 0 if language_of(question) == "zh" else 1
    parts = [_LEADS[k][lang] for k in ("emergency", "dose", "medicine_change", "price", "contact") if getattr(asks, k)]
    if asks.live and (not asks.emergency or asks.emergency_by_meaning):
        return Lead(" ".join([*parts, _LEADS["live"][lang]]).strip(), complete=True)
    if not parts:
        return None
    return Lead(("" if lang == 0 else " ").join(parts) + ("\n\n" if parts else ""))
